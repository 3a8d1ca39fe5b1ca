"""Network post-copy, tried for real on this host (the `criu` module's check probe).

`criu check` can pass on a kernel that still refuses what network lazy pages need (this
project's CI kernel: "page-pipe: tee: 65536: Operation not permitted", docs/lab.md), so
the probe does the round trip: a throwaway process is dumped with `--lazy-pages` serving a
local port, a `criu lazy-pages --page-server` daemon fetches from it, the process is
restored with `--lazy-pages` in a fresh pid namespace, and it must read its memory back
intact. The verdict names the failing side (dump: the source's; lazy-pages / restore: the
destination's) and CRIU's reason. Verdicts are cached per kernel, boot and CRIU binary.
Standard library only (this file runs on the nodes).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ansible.module_utils.criu_cli import LAZY_DUMP_SERVING, lazy_network_probe_verdict, log_tail
from ansible.module_utils.criu_runner import CriuRunner
from ansible.module_utils.processes import (
    ProcessFiles,
    is_alive,
    reap,
    start_detached,
    terminate,
    wait_until,
)

PROBE_NAME = "lazy_pages_network"

# The throwaway process: 1 MiB of random bytes (every page touched), its digest in `ready`;
# once `go` appears (after the restore) it digests the memory again into `result` and
# exits. argv[1] is the probe's folder.
_PROBE_CHILD = (
    "import hashlib, os, sys, time\n"
    "os.closerange(3, 65536)\n"
    "os.chdir('/')\n"
    "d = sys.argv[1]\n"
    "buf = bytearray(os.urandom(1 << 20))\n"
    "def put(name, text):\n"
    "    tmp = os.path.join(d, name + '.tmp')\n"
    "    with open(tmp, 'w') as f:\n"
    "        f.write(text)\n"
    "    os.replace(tmp, os.path.join(d, name))\n"
    "put('ready', hashlib.sha256(buf).hexdigest())\n"
    "while not os.path.exists(os.path.join(d, 'go')):\n"
    "    time.sleep(0.02)\n"
    "put('result', hashlib.sha256(buf).hexdigest())\n"
)


def probe_lazy_pages_network(
    runner: CriuRunner, unshare: str | None, timeout_s: float, cache_dir: str | None
) -> dict[str, Any]:
    """The probe's verdict (ok, side, reason, cached, duration_s), from the cache when fresh."""
    cache = (
        Path(cache_dir) / f"{PROBE_NAME}-{_cache_key(runner.criu_bin)}.json" if cache_dir else None
    )
    if cache is not None and cache.is_file():
        with contextlib.suppress(ValueError):
            cached = json.loads(cache.read_text())
            if isinstance(cached, dict):  # anything else is a damaged cache: probe again
                return {**cached, "cached": True}
    t0 = time.monotonic()
    if unshare:
        verdict = LazyNetworkProbe(runner, unshare, timeout_s).run()
    else:
        verdict = {"ok": False, "side": "setup", "reason": "unshare (util-linux) is not installed"}
    verdict.update(
        name=PROBE_NAME,
        duration_s=round(time.monotonic() - t0, 3),
        probed_at=time.time(),
        kernel=platform.release(),
        criu_bin=runner.criu_bin,
    )
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(verdict))
    return {**verdict, "cached": False}


def _cache_key(criu_bin: str) -> str:
    """Kernel, boot and CRIU binary: a verdict holds until one of them changes."""
    try:
        boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot_id = ""
    binary = os.stat(criu_bin)
    key = f"{platform.release()}|{boot_id}|{criu_bin}|{binary.st_size}|{binary.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


class LazyNetworkProbe:
    """dump --lazy-pages -> lazy-pages --page-server -> restore --lazy-pages, on this host."""

    def __init__(self, runner: CriuRunner, unshare: str, timeout_s: float) -> None:
        self.runner = runner
        self.unshare = unshare
        self.timeout = float(timeout_s)
        self.started: list[int] = []  # PIDs (process groups) this probe started
        self.lazy_pid: int | None = None

    def run(self) -> dict[str, Any]:
        workdir = Path(tempfile.mkdtemp(prefix="criu-lazy-probe-"))
        try:
            return self._run(workdir)
        finally:
            self._cleanup()
            shutil.rmtree(workdir, ignore_errors=True)

    def _spawn(self, argv: list[str], name: str, workdir: Path) -> ProcessFiles:
        files = ProcessFiles.at(workdir / f"{name}.pid")
        pid = start_detached(argv, output=files.output, exit_file=files.exit_file)
        files.write_pid(pid)
        self.started.append(pid)
        return files

    @staticmethod
    def _ended(files: ProcessFiles) -> bool:
        return files.read_exit() is not None

    def _run(self, workdir: Path) -> dict[str, Any]:
        src, dst = workdir / "source", workdir / "destination"
        src.mkdir()
        dst.mkdir()
        logs = {side: workdir / f"{side}.log" for side in ("dump", "lazy-pages", "restore")}

        def verdict(restored_ok: bool = False, stuck: str = "") -> dict[str, Any]:
            texts = {side: _read(path) for side, path in logs.items() if path.exists()}
            result = lazy_network_probe_verdict(texts, restored_ok)
            if stuck and not result["ok"] and not result["side"]:
                result.update(side="setup", reason=stuck)
            return result

        def within(done: Callable[[], bool], seconds: float) -> bool:
            return wait_until(done, seconds)

        child = self._spawn([sys.executable, "-c", _PROBE_CHILD, str(workdir)], "child", workdir)
        ready = workdir / "ready"
        if not within(lambda: ready.exists() or self._ended(child), 10):
            return verdict(stuck="the probe's throwaway process did not start within 10 s")
        if self._ended(child):
            code = (child.read_exit() or (None, 0))[0]
            return verdict(stuck=f"the probe's throwaway process exited ({code})")
        expected = ready.read_text()

        port = _free_port()
        dump_opts = {
            "pid": child.read_pid(),
            "images_dir": str(src),
            "log_file": str(logs["dump"]),
            "lazy_pages": True,
            "address": "127.0.0.1",
            "port": port,
        }
        dump = self._spawn(self.runner.argv("dump", dump_opts), "dump", workdir)
        serving = within(
            lambda: self._ended(dump) or LAZY_DUMP_SERVING in _read(logs["dump"]), self.timeout
        )
        if not serving or self._ended(dump):
            return verdict(
                stuck=f"criu dump --lazy-pages did not start serving within {self.timeout:.0f} s"
            )
        for image in src.glob("*.img"):
            shutil.copy2(image, dst / image.name)

        pidfile = workdir / "lazy-pages.pid"
        call = self.runner.run(
            "lazy-pages",
            {
                "images_dir": str(dst),
                "log_file": str(logs["lazy-pages"]),
                "page_server": True,
                "address": "127.0.0.1",
                "port": port,
                "pidfile": str(pidfile),
            },
            self.timeout,
        )
        if not call.ok:
            return verdict(
                stuck=f"criu lazy-pages did not start (rc={call.rc}): {log_tail(call.output, 2)}"
            )
        self.lazy_pid = ProcessFiles.at(pidfile).read_pid()

        # A fresh pid namespace: the dumped process still holds its PID here until its pages
        # are served. criu is that namespace's init, so it restores attached (no -d).
        restore_argv = self.runner.argv(
            "restore",
            {
                "images_dir": str(dst),
                "log_file": str(logs["restore"]),
                "lazy_pages": True,
                "restore_detached": False,
            },
        )
        restore = self._spawn(
            [self.unshare, "--pid", "--fork", "--mount-proc", *restore_argv], "restore", workdir
        )
        restored = within(
            lambda: (
                self._ended(restore) or "Restore finished successfully" in _read(logs["restore"])
            ),
            self.timeout,
        )
        result = workdir / "result"
        if restored and not self._ended(restore):
            (workdir / "go").write_text("go")
            within(lambda: result.exists() or self._ended(restore), 10)
        restored_ok = result.exists() and result.read_text() == expected
        # Every page served: the dump, the daemon and the restored process end by themselves.
        within(lambda: self._ended(restore) and self._ended(dump), 10)
        if not restored:
            return verdict(
                stuck=f"criu restore --lazy-pages did not finish within {self.timeout:.0f} s"
            )
        dump_exit = dump.read_exit()
        return verdict(restored_ok and dump_exit is not None and dump_exit[0] == 0)

    def _cleanup(self) -> None:
        for pid in reversed(self.started):
            if is_alive(pid):
                terminate(pid, group=True)
            reap(pid)
        if self.lazy_pid and is_alive(self.lazy_pid):
            terminate(self.lazy_pid, group=False)
