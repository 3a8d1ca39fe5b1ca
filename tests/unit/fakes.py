"""What the unit tests share: stand-ins for the tools a module runs (`criu`, `ssh`), a way to
run a module as Ansible does, and the recorded fixtures' places.

Not a test module: the tests import it by name (`from fakes import ...`), as pytest puts
tests/unit/ on sys.path for them.

The fake `criu` scripts are one head (FAKE_CRIU_HEAD: the call record, FAKE_CRIU_MODE, and
what every fake needs - `opt`, `wait_for`, `hang`, a dump failing as CRIU 4.2.1 fails) and a
body each test module writes for what it exercises (install_fake_criu).
"""

from __future__ import annotations

import json
import sys
import tempfile
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
# The stats images a real dump and restore wrote (tests/fixtures/criu_stats/).
CRIU_STATS = FIXTURES / "criu_stats" / "full-dump"
# What CRIU 4.2.1 printed on a machine of the project's kind, recorded by the folder's record.sh:
# NAME.txt a command's output, rc.json each command's exit status, uname-r.txt the kernel.
CRIU_CLI = FIXTURES / "criu_cli"
CRIU_CLI_RCS = json.loads((CRIU_CLI / "rc.json").read_text())
CRIU_CLI_KERNEL = (CRIU_CLI / "uname-r.txt").read_text().strip()
# What CRIU 4.2.1 logs first on every run on this project's machines: an error it lives with.
CRIU_RLIMIT = (
    "(00.000301) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self: "
    "Operation not permitted"
)


def recorded_criu(name: str) -> tuple[int, str]:
    """The exit status and the output of the recorded CRIU command `name` (CRIU_CLI)."""
    return CRIU_CLI_RCS[name]["rc"], (CRIU_CLI / f"{name}.txt").read_text()


def run_ansible_module(
    module: ModuleType, args: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> tuple[int, dict[str, Any]]:
    """`module.main()` run the way Ansible runs it, with `args` as the module's arguments:
    its exit status and the JSON it printed."""
    capsys.readouterr()
    with patch_module_args(args), pytest.raises(SystemExit) as excinfo:
        module.main()
    return int(excinfo.value.code or 0), json.loads(capsys.readouterr().out)


def install_script(path: Path, text: str) -> Path:
    """An executable script at `path` (its folder made when missing)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def read_jsonl(path: Path) -> list[Any]:
    """The JSON lines a stand-in appended to `path` (none when it never ran)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# -- criu ---------------------------------------------------------------------------------------

FAKE_CRIU_HEAD = textwrap.dedent(
    """\
    #!{python}
    # A fake criu (tests/unit/fakes.py). Each call appends {{"pid": ..., "args": ...}} to
    # FAKE_CRIU_CALLS; FAKE_CRIU_MODE picks what it does.
    import json, os, shutil, subprocess, sys, time
    from pathlib import Path

    args = sys.argv[1:]
    with open(os.environ["FAKE_CRIU_CALLS"], "a") as calls:
        calls.write(json.dumps({{"pid": os.getpid(), "args": args}}) + "\\n")
    mode = os.environ.get("FAKE_CRIU_MODE", "ok")
    rlimit = {rlimit!r} + "\\n"


    def opt(name):
        return args[args.index(name) + 1] if name in args else None


    def wait_for(done, seconds=10.0):
        deadline = time.monotonic() + seconds
        while not done() and time.monotonic() < deadline:
            time.sleep(0.01)
        return done()


    def hang():
        print("(00.000100) freezing tasks", flush=True)
        time.sleep(30)


    def fail_to_dump(log):
        # as CRIU 4.2.1 fails on a file it cannot look up: its log, its output, rc 1
        log.write_text(
            "(00.000000) Version: 4.2.1 (gitid 0)\\n" + rlimit
            + "(00.010220) Error (criu/files-reg.c:1710): Can't lookup mount=22 for fd=3 path=/dev/pts/0\\n"
            + "(00.010500) Error (criu/cr-dump.c:2111): Dumping FAILED.\\n"
        )
        print("Error (criu/cr-dump.c:2111): Dumping FAILED.")
        sys.exit(1)


    """
)


def install_fake_criu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, **values: str
) -> Path:
    """tmp_path/bin/criu: FAKE_CRIU_HEAD, then `body` (dedented). Both are formatted with
    `python`, `rlimit` and `values` (so their own braces are doubled); the calls go to
    tmp_path/calls.jsonl (criu_calls, criu_call_records)."""
    monkeypatch.setenv("FAKE_CRIU_CALLS", str(tmp_path / "calls.jsonl"))
    text = FAKE_CRIU_HEAD + textwrap.dedent(body)
    return install_script(
        tmp_path / "bin" / "criu",
        text.format(python=sys.executable, rlimit=CRIU_RLIMIT, **values),
    )


def criu_call_records(tmp_path: Path) -> list[dict[str, Any]]:
    """Every call of install_fake_criu's criu, in order: its pid and its args."""
    return read_jsonl(tmp_path / "calls.jsonl")


def criu_calls(tmp_path: Path) -> list[list[str]]:
    """The argv (without the binary) of every call of install_fake_criu's criu, in order."""
    return [record["args"] for record in criu_call_records(tmp_path)]


def assert_refused_before_criu(
    rc: int, result: dict[str, Any], message: str, tmp_path: Path
) -> None:
    """A module run failed with exactly `message` without calling install_fake_criu's criu."""
    assert rc == 1, result
    assert result["failed"] is True
    assert result["msg"] == message
    assert criu_calls(tmp_path) == []


# -- ssh ----------------------------------------------------------------------------------------

# `ssh` emulating OpenSSH's connection sharing: `-o ControlMaster=yes ... -N` is the master (it
# writes its PID at ControlPath and runs until `-O exit` or a signal), `-O check` / `-O exit`
# talk to it, and a channel (`ssh ... host -- <command>`) runs <command> with `sh -c` here -
# only while a master is up, as a channel of it would. FAKE_SSH_REFUSE: the master is refused;
# FAKE_SSH_SILENT: it never accepts channels; FAKE_DEST_TAMPER: a shell command run before a
# channel's sha256sum (the destination's copy is not the source's).
FAKE_SSH = r'''#!@PYTHON@ -S
"""ssh stand-in: a master, -O check / -O exit, and channels that run `sh -c <command>`."""
import json, os, signal, subprocess, sys, time

args = sys.argv[1:]
with open(os.environ["FAKE_SSH_LOG"], "a") as log:
    log.write(json.dumps(args) + "\n")
WITH_VALUE = set("BbcDEeFIiJLlmOopQRSWw")
options, control, host, rest = {}, None, None, []
i = 0
while i < len(args):
    arg = args[i]
    if arg == "--":
        rest = args[i + 1:]
        break
    if arg.startswith("-") and len(arg) > 1:
        if arg[1] in WITH_VALUE:
            value = arg[2:] or args[i + 1]
            i += 1 if arg[2:] else 2
            if arg[1] == "o":
                key, _, val = value.partition("=")
                options[key] = val
            elif arg[1] == "O":
                control = value
            continue
        i += 1
        continue
    if host is None:
        host = arg
        i += 1
        continue
    rest = args[i:]
    break
socket = options.get("ControlPath")


def master_pid():
    try:
        pid = int(open(socket).read())
        os.kill(pid, 0)
    except (OSError, ValueError, TypeError):
        return None
    return pid


if control == "check":
    pid = master_pid()
    if pid is None:
        print(f"Control socket connect({socket}): No such file or directory", file=sys.stderr)
        sys.exit(255)
    print(f"Master running (pid={pid})", file=sys.stderr)
    sys.exit(0)
if control == "exit":
    pid = master_pid()
    if pid is None:
        print(f"Control socket connect({socket}): No such file or directory", file=sys.stderr)
        sys.exit(255)
    os.kill(pid, signal.SIGTERM)
    print("Exit request sent.", file=sys.stderr)
    sys.exit(0)
if options.get("ControlMaster") == "yes":
    if os.environ.get("FAKE_SSH_REFUSE"):
        print(f"{host}: Permission denied (publickey).", file=sys.stderr)
        sys.exit(255)
    with open(os.environ["FAKE_SSH_MASTERS"], "a") as masters:
        masters.write(f"{os.getpid()}\n")

    def stop(*_):
        try:
            os.unlink(socket)
        except OSError:
            pass
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    if not os.environ.get("FAKE_SSH_SILENT"):  # silent: never accepts channels
        with open(socket, "w") as out:
            out.write(str(os.getpid()))
    while True:
        time.sleep(1)
# a channel: only over the master, as ControlMaster=no with a live socket is
if master_pid() is None:
    print(f"fake ssh: no master at {socket}", file=sys.stderr)
    sys.exit(255)
command = " ".join(rest)  # what ssh sends: the words after the host, joined by spaces
tamper = os.environ.get("FAKE_DEST_TAMPER")
if tamper and "sha256sum" in command:  # the destination's copy is not the source's
    subprocess.run(["sh", "-c", tamper], check=True)
os.execvp("sh", ["sh", "-c", command])
'''


def install_fake_ssh(
    monkeypatch: pytest.MonkeyPatch, bin_dir: Path, *, log: Path, masters: Path, temp: Path
) -> Path:
    """FAKE_SSH as bin_dir/ssh, first on PATH (then /usr/bin:/bin): it appends its argv to
    `log` and its masters' PIDs to `masters` (master_pids); the masters' control folders
    (tempfile's) go under `temp`."""
    ssh = install_script(bin_dir / "ssh", FAKE_SSH.replace("@PYTHON@", sys.executable))
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    monkeypatch.setenv("FAKE_SSH_MASTERS", str(masters))
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # the master's control folder
    return ssh


def master_pids(masters: Path) -> list[int]:
    """The PIDs of the masters FAKE_SSH started (its FAKE_SSH_MASTERS file)."""
    return [int(line) for line in masters.read_text().split()] if masters.exists() else []
