#!/usr/bin/python
"""Ansible module: the migration's critical path - final dump, transfer, restore - in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: critical_path
short_description: Final dump, transfer and restore on the destination, in one call on the source
description:
  - The fused critical path of a migration (C(critical_path=fused)). Runs on the source; in
    one process it dumps the workload (C(criu dump)), sends the images and the working
    directory with a transfer backend (C(module_utils/transfer_backends.py)) and restores
    the tree on the destination (C(criu restore --restore-detached)), started from here over
    an SSH master connection to the destination that is opened before the freeze, with the
    same trust the transfer uses (C(module_utils/ssh_master.py)). No Ansible task boundary
    lies between the phases.
  - Everything the freeze does not need is prepared first - the master connection, the
    destination's folders, the restore's argv, the EC2 client (I(handover)). The page server (C(page_server=true)) and a
    PID taken on purpose (C(inject_fault=restore_pid_busy)) are set up by earlier tasks.
  - Every critical-path timestamp is taken on the source's monotonic clock, so
    C(downtime_s) (dump start to the restore having the tree running) needs no clock
    correction between hosts. Sub-phase timings, CRIU's statistics (the restore's fetched
    after the restore, off the critical path) and the transfer's figures are returned as
    C(results) items for the metrics callback, as the stepwise tasks return them.
  - The module writes its progress, one JSON line per step, to I(journal) on the source, so
    a recovery can tell where the workload is even if the control node died mid-call.
  - Before the freeze the module checks that the workload still runs and that the source
    (for the dump) and the destination (for the transfer or the page server) have room for
    the checkpoint - the tree's resident anonymous and shared memory, plus
    I(space_margin_pct) and I(space_reserve_mb); a shortage is refused there, nothing frozen.
  - With C(dump.leave_stopped) (CRIU's C(--leave-stopped)) the dumped tree stays on the
    source, stopped, until the destination confirms the restore; then it is killed (and a
    TCP workload's network lock removed). When the transfer or the restore fails, or the
    destination becomes unreachable - even after a page-server dump, whose pages exist only
    there - the tree is resumed where it is (TCP repair mode off, CRIU's network lock
    removed, SIGCONT; C(module_utils/source_tree.py)), its connections intact. When the
    restore's outcome cannot be told (the destination went away during it and cannot be
    reached within I(confirm_timeout)), the tree stays stopped and the journal says so -
    C(playbooks/recover.yml) decides.
  - The work runs detached from the SSH session (C(module_utils/detached.py)) - a control
    node killed or interrupted during the call does not stop it; the journal, whose lines
    say where the workload is (C(where)), and C(critical-path.result.json) beside it tell a
    recovery how it ended.
  - On a failure the module fails with what was done (C(dumped), C(restored), C(where) and
    the records); the run's rescue then finds the workload on the source, or restores it
    there from the same images (a dump without C(leave_stopped)), as after a failed
    stepwise phase.
options:
  criu_bin:
    description: The source's criu binary. Found in /usr/local/sbin, /usr/sbin or PATH when omitted.
    type: path
  dump:
    description: The final dump's CRIU options (the M(criu) module's names - C(pid),
      C(images_dir), C(log_file), C(track_mem), C(prev_images_dir), C(page_server),
      C(address), C(port), C(tcp_established), C(network_lock), C(file_locks); C(tls),
      C(tls_cacert), C(tls_cert), C(tls_key) for page traffic over TLS). With
      C(lazy_pages=true) the dump is network post-copy - it runs in the background and
      serves the pages (I(lazy_dump_pidfile)).
    type: dict
    required: true
  lazy_dump_pidfile:
    description: Where a network post-copy dump's PID and companions go (dump.lazy_pages).
    type: path
  paths:
    description: Absolute paths on the source the transfer makes exist on the destination
      (the final images and the working directory).
    type: list
    elements: path
    required: true
  verify:
    description: Checksum the sent files during the send and compare them on the
      destination (C(sha256sum --check)) before the restore; a mismatch fails the call.
    type: bool
    default: false
  fault:
    description:
      - C(interrupt) cuts the transfer's SSH connection midway; C(corrupt_image) flips one
        byte of the largest page image on the destination after the transfer.
      - C(dump_fails) makes the final dump fail half way for real (a CRIU action script that
        fails at the post-dump stage, and CRIU undoes the dump); C(dump_crashes) kills CRIU
        there (its network lock and the sockets' repair mode stay behind).
      - C(disk_full) fills the destination's images filesystem after the freeze, before the
        transfer (refused before the freeze where that would take more than 1 GiB).
    type: str
    choices: [none, interrupt, corrupt_image, dump_fails, dump_crashes, disk_full]
    default: none
  working_dir:
    description: The workload's working directory on the source (its size counts in the
      space check; its C(workload_error.log) explains a workload found dead).
    type: path
  space_margin_pct:
    description: The space check's margin over the tree's resident memory, in percent; a
      negative value turns the check off.
    type: int
    default: 10
  space_reserve_mb:
    description: MB the space check adds for the small image files (and the working directory's size).
    type: int
    default: 8
  confirm_timeout:
    description: Seconds to try to reach the destination again when the connection died
      during the restore, to tell whether the workload runs there.
    type: int
    default: 20
  handover:
    description: C(transfer=ebs) - the source moves the pair's EBS volume to the destination
      itself, between the send (which unmounted it here) and the receive (which mounts it
      there) - C(DetachVolume), C(AttachVolume) and their waits through the EC2 API, with the
      node's C(python3-boto3) and I(aws). In the namespaces lab (C(implementation=lab)) the
      attach presents a loop device on the volume's backing file (C(module_utils/ebs_attach.py)).
    type: dict
    suboptions:
      volume_id:
        description: The pair's volume.
        type: str
        required: true
      instance_id:
        description: The destination's instance.
        type: str
        required: true
      implementation:
        description: C(aws) (EC2 presents the device) or C(lab).
        type: str
        choices: [aws, lab]
        default: aws
      lab_backing_dir:
        description: The lab's folder of volume backing files.
        type: path
      endpoint_url:
        description: An EC2-compatible endpoint (empty - AWS's own).
        type: str
      timeout_s:
        description: Seconds the detach and the attach may each take.
        type: float
        default: 300
      no_device:
        description: Attach in the API and present no device (C(inject_fault=ebs_attach_fail), lab only).
        type: bool
        default: false
  lazy_pages_daemon:
    description: The destination's C(criu lazy-pages) options (C(images_dir), C(log_file),
      C(pidfile), C(page_server), C(address), C(port), and the C(tls) options of I(dump));
      given - it is started after the transfer, before the restore (lazy_pages=true).
    type: dict
  restore:
    description: The restore's CRIU options on the destination (C(images_dir), C(log_file),
      C(pidfile), C(lazy_pages), C(tcp_established), C(network_lock), C(file_locks)) and
      C(criu_bin), the destination's criu binary.
    type: dict
    required: true
  journal:
    description: The progress journal on the source (JSON lines).
    type: path
    required: true
  timeout:
    description: Seconds each step (dump, transfer, restore) may take.
    type: int
    default: 600
extends_documentation_fragment: [transfer, aws_api]
attributes:
  check_mode:
    support: partial
    details: Reports the plan (dump and restore argv) and runs nothing - dumps and restores are
      never idempotent.
notes:
  - Reports C(changed=true).
  - The destination needs the same login the transfer uses; commands there run as root or
    under C(sudo -n).
seealso:
  - module: criu
  - module: checkpoint_transfer
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Final dump, transfer and restore in one call
  critical_path:
    dump:
      pid: "{{ workload_pid }}"
      images_dir: /var/lib/criu-migration/images/e1/1
      log_file: /var/lib/criu-migration/images/e1/criu-dump.log
    paths: [/var/lib/criu-migration/images/e1/1, /var/lib/criu-migration/work/e1]
    transfer:
      method: rsync
      destination: 10.77.0.12
      ssh_key: /work/main/.lab/id_ed25519
      known_hosts: /work/main/.lab/known_hosts
      cipher: aes128-gcm@openssh.com
    restore:
      criu_bin: /usr/local/sbin/criu
      images_dir: /var/lib/criu-migration/images/e1/1
      log_file: /var/lib/criu-migration/images/e1/criu-restore.log
      pidfile: /var/lib/criu-migration/images/e1/restored.pid
    journal: /var/lib/criu-migration/images/e1/critical-path.journal
  register: migrated
"""

RETURN = r"""
downtime_s:
  description: From the dump's start to the restore having the tree running, on the
    source's monotonic clock.
  returned: success
  type: float
  sample: 1.42
dumped:
  description: The final dump succeeded (the workload is frozen or gone on the source).
  returned: always
  type: bool
  sample: true
restored:
  description: The restore succeeded on the destination.
  returned: always
  type: bool
  sample: true
restore:
  description: The restore's result - C(pid) of the restored tree, duration, log, stats.
  returned: success
  type: dict
  sample: {pid: 16021, duration_s: 0.21, stats: {restore_s: 0.2}}
plan:
  description: The dump and restore argv (what a hand-run floor chains for comparison).
  returned: always
  type: dict
  sample: {dump: [/usr/local/sbin/criu, dump, --images-dir, /i/1], restore: [criu, restore]}
steps:
  description: Each step's start and end, seconds after the dump started (source's
    monotonic clock).
  returned: always
  type: dict
  sample: {dump: [0.0, 0.21], transfer: [0.21, 1.0], restore: [1.01, 1.23]}
results:
  description: One item per phase (final_dump, transfer, restore) with its
    C(migration_metrics), as the stepwise tasks return them.
  returned: always
  type: list
  elements: dict
failed_phase:
  description: On a failure, the phase of the step that failed (C(final_dump), C(transfer),
    C(restore); C(critical_path) before the freeze) - the metrics file the failure under it.
  returned: failure
  type: str
  sample: restore
where:
  description: Where the workload is at the end of the call (also the journal's last C(where)).
  returned: always
  type: str
  sample: destination
source_tree:
  description: What became of the source's dumped tree - C(action) (C(ended), C(resumed),
    C(kept stopped)), its C(pids), the sockets taken out of repair mode, the network-lock
    tables removed.
  returned: when the dump ran
  type: dict
  sample: {action: ended, pids: [16020, 16022], lock_removed: [CRIU-0c4b1e6f-2f83-4a7a-9b]}
migration_metrics:
  description: The path's own figures (phase C(critical_path)).
  returned: always
  type: dict
  sample: {phase: critical_path, data: {path: fused, downtime_s: 1.42}}
"""

import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.criu_cli import log_tail
from ansible.module_utils.criu_runner import (
    CriuRunner,
    daemon_meta,
    find_criu,
    start_lazy_dump,
)
from ansible.module_utils.criu_stats import CriuStatsError, summarize_stats_image
from ansible.module_utils.detached import run_detached
from ansible.module_utils.ebs_attach import AttachError, Ec2Volumes, volumes_for
from ansible.module_utils.faults import (
    CORRUPT_PAGE_IMAGE_SH,
    DISK_FULL_MAX_BYTES,
    DISK_FULL_SH,
    DUMP_FAULT_SCRIPT,
    DUMP_FAULT_SCRIPTS,
    parse_corruption,
)
from ansible.module_utils.private_files import private_umask, umasked
from ansible.module_utils.processes import ProcessFiles, is_alive, write_atomic
from ansible.module_utils.source_tree import (
    dump_run_id,
    is_stopped,
    lock_tables,
    memory_bytes,
    remove_lock,
    tree_pids,
    tree_states,
)
from ansible.module_utils.source_tree import kill as kill_tree
from ansible.module_utils.source_tree import resume as resume_tree
from ansible.module_utils.ssh_master import SshMaster, SshMasterError
from ansible.module_utils.transfer_backends import (
    AWS_OPTIONS,
    TRANSFER_OPTIONS,
    TransferError,
    backend_for,
    combine_sides,
    request_from_options,
    sha256sum_check_input,
    sha256sum_problems,
    transfer_send,
)


class Journal:
    """The module's progress on the source, one JSON line per step (read by a recovery)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        # where the workload is, on every line (a recovery reads the last one)
        self.where = "source"

    def write(self, step: str, **data: Any) -> None:
        record = {
            "step": step,
            "at": time.time(),
            "monotonic": time.monotonic(),
            "where": self.where,
            **data,
        }
        # its folder is made at the first step, not before: check mode writes nothing
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as out:
            out.write(json.dumps(record) + "\n")
            out.flush()


class CriticalPathFailed(Exception):
    """A step failed; what to tell the user (the records say what was done), and the
    phase it belongs to (the metrics file the failure under it, as for a stepwise task)."""

    def __init__(self, message: str, phase: str) -> None:
        super().__init__(message)
        self.phase = phase


class CriticalPath:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.params = module.params
        self.host = platform.node()
        self.runner = CriuRunner(find_criu(module.get_bin_path, self.params["criu_bin"]))
        restore = dict(self.params["restore"])
        self.remote_runner = CriuRunner(restore.pop("criu_bin", None) or "criu", "destination")
        self.restore_opts = restore
        self.dump_opts = dict(self.params["dump"])
        self.results: list[dict[str, Any]] = []
        self.steps: dict[str, list[float]] = {}
        self.t0: float | None = None
        self.dumped = False
        self.restored = False
        self.journal = Journal(self.params["journal"])
        self.master: SshMaster | None = None
        self.volumes: Ec2Volumes | None = None
        # the phase of the step under way: an unexpected error is filed under it
        self.phase = "critical_path"
        # --leave-stopped: the source's tree, kept stopped until the destination confirms
        self.leave_stopped = bool(self.dump_opts.get("leave_stopped"))
        self.run_id: str | None = None  # the dump's CRIU run id: names its network lock
        self.restore_unknown = False  # the connection died during the restore
        self.space: dict[str, Any] = {}
        self.source_tree: dict[str, Any] = {}

    # -- bookkeeping -------------------------------------------------------------------
    def _since_t0(self, moment: float) -> float:
        return round(moment - (self.t0 if self.t0 is not None else moment), 6)

    def _step(self, name: str, start: float, end: float) -> None:
        self.steps[name] = [self._since_t0(start), self._since_t0(end)]

    def _record(self, phase: str, data: dict[str, Any]) -> None:
        self.results.append({"migration_metrics": {"phase": phase, "data": data}})

    def plan(self) -> dict[str, list[str]]:
        return {
            "dump": self.runner.argv("dump", self.dump_opts),
            "restore": self.remote_runner.argv("restore", self.restore_opts),
        }

    # -- the steps ---------------------------------------------------------------------
    def prepare(self) -> None:
        """Before the freeze: the master connection and the destination's folders."""
        request = request_from_options(
            self.params["transfer"], self.params["paths"], self.params["aws"]
        )
        self.master = SshMaster(request)
        try:
            self.master.open()
        except SshMasterError as exc:
            raise CriticalPathFailed(
                f"{exc} (before the freeze: the workload runs on the source as before)",
                "critical_path",
            ) from exc
        folders = sorted(
            {
                str(Path(self.restore_opts[key]).parent)
                for key in ("log_file", "images_dir")
                if self.restore_opts.get(key)
            }
        )
        rc, _out, err = self.master.run(umasked(["mkdir", "-p", *folders]), 30)
        if rc != 0:
            raise CriticalPathFailed(
                f"cannot create {', '.join(folders)} on {request.destination}: {err.strip()}",
                "critical_path",
            )
        handover = self.params["handover"]
        if handover:
            try:  # boto3's import and the client, before the freeze
                self.volumes = volumes_for(
                    self.params["aws"],
                    handover["endpoint_url"],
                    handover["implementation"],
                    handover["lab_backing_dir"],
                    no_device=handover["no_device"],
                )
            except AttachError as exc:
                raise CriticalPathFailed(
                    f"{exc} (before the freeze: the workload runs on the source as before)",
                    "critical_path",
                ) from exc
        self.before_freeze()
        self.journal.write("prepared", plan=self.plan(), space=self.space)

    def before_freeze(self) -> None:
        """What must hold before the workload is frozen: it still runs, the checkpoint fits
        on both hosts, an injected fault is ready."""
        pid = int(self.dump_opts["pid"])
        if not is_alive(pid):
            error_log = Path(self.params["working_dir"] or "/nonexistent") / "workload_error.log"
            text = error_log.read_text(errors="replace").strip() if error_log.is_file() else ""
            raise CriticalPathFailed(
                f"the workload (pid {pid}) no longer runs on {self.host}, so nothing was "
                "frozen" + (f": it died ({error_log}: {text.splitlines()[-1]})" if text else ""),
                "critical_path",
            )
        if self.params["space_margin_pct"] >= 0:
            self.check_space(pid)
        fault = self.params["fault"]
        if fault in DUMP_FAULT_SCRIPTS:
            script = Path(self.dump_opts["log_file"]).parent / DUMP_FAULT_SCRIPT
            write_atomic(script, DUMP_FAULT_SCRIPTS[fault])
            script.chmod(0o700)
            self.dump_opts["action_script"] = str(script)
        if fault == "disk_full" and self.space["destination"]["free_bytes"] > DISK_FULL_MAX_BYTES:
            raise CriticalPathFailed(
                "inject_fault=disk_full fills the destination's images filesystem, which has "
                f"{self.space['destination']['free_bytes'] / 1e6:.0f} MB free - more than the "
                f"{DISK_FULL_MAX_BYTES / 1e6:.0f} MB the fault may take; make it smaller first "
                "(nothing was frozen)",
                "critical_path",
            )

    def check_space(self, pid: int) -> None:
        """Refuse before the freeze when the checkpoint cannot fit: its page images are about
        the tree's resident anonymous and shared memory (+ space_margin_pct), written where
        the dump writes (unless a page server takes them) and where the transfer puts them
        (unless both hosts share the storage, or the pages stay on the source)."""
        assert self.master is not None
        p = self.params
        memory = memory_bytes(tree_pids(pid))
        working = sum(
            f.stat().st_size
            for f in Path(p["working_dir"] or "/nonexistent").rglob("*")
            if f.is_file() and not f.is_symlink()
        )
        reserve = p["space_reserve_mb"] * 1024 * 1024 + working
        pages = int(memory * (1 + p["space_margin_pct"] / 100))
        shared = p["transfer"].get("method") in ("efs", "ebs")
        lazy_network = bool(self.dump_opts.get("lazy_pages"))
        page_server = bool(self.dump_opts.get("page_server"))
        images = Path(self.dump_opts["images_dir"])
        folder = next(d for d in (images, *images.parents) if d.exists())
        stat = os.statvfs(folder)
        # the images folder's parent: made just now (the images folder is made by the transfer)
        dest_folder = str(Path(self.restore_opts["images_dir"]).parent)
        rc, out, err = self.master.run(["df", "-P", "-B1", dest_folder], 30)
        fields = out.splitlines()[-1].split() if rc == 0 and out.strip() else []
        if len(fields) < 4 or not fields[3].isdigit():
            raise CriticalPathFailed(
                f"cannot read the free space at {dest_folder} on the destination: "
                f"{(err or out).strip() or 'no df output'} (nothing was frozen)",
                "critical_path",
            )
        self.space = {
            "memory_bytes": memory,
            "margin_pct": p["space_margin_pct"],
            "reserve_bytes": reserve,
            "source": {
                "path": str(folder),
                "free_bytes": stat.f_bavail * stat.f_frsize,
                "needed_bytes": reserve + (0 if page_server else pages),
            },
            "destination": {
                "path": dest_folder,
                "free_bytes": int(fields[3]),
                "needed_bytes": reserve + (0 if shared or lazy_network else pages),
            },
        }
        for side in ("source", "destination"):
            room = self.space[side]
            if room["free_bytes"] < room["needed_bytes"]:
                raise CriticalPathFailed(
                    f"not enough space for the checkpoint on the {side} at {room['path']}: "
                    f"{room['free_bytes'] / 1e6:.1f} MB free, about {room['needed_bytes'] / 1e6:.1f}"
                    f" MB needed (the workload's resident anonymous and shared memory "
                    f"{memory / 1e6:.1f} MB + {p['space_margin_pct']} % + {reserve / 1e6:.1f} MB "
                    "for the small image files and the working directory); nothing was "
                    "frozen: the workload runs on the source as before",
                    "critical_path",
                )

    def dump(self) -> None:
        self.phase = "final_dump"
        self.journal.write("dump started", pid=self.dump_opts.get("pid"))
        if self.dump_opts.get("lazy_pages"):
            files = ProcessFiles.at(self.params["lazy_dump_pidfile"])
            call, pid = start_lazy_dump(self.runner, self.dump_opts, files, self.params["timeout"])
            if call.ok:  # criu_daemon state=stopped collects it after the restore
                files.write_meta(daemon_meta("lazy-dump", call, pid, self.dump_opts))
            extra = {"pid": pid, "lazy_network": True, "serving": call.ok}
        else:
            call = self.runner.run("dump", self.dump_opts, self.params["timeout"])
            extra = {}
        # the clock starts with CRIU's start (the folders CRIU needs were made before it):
        # the dump step starts at 0.0 and the downtime runs from the dump's start
        self.t0 = call.monotonic_start
        self._step("dump", call.monotonic_start, call.monotonic_end)
        data = call.metrics(images_dir=self.dump_opts["images_dir"], cmd=call.argv, **extra)
        self.run_id = dump_run_id(call.log_text())
        if not call.ok:
            data["failed"] = True
            self._record("final_dump", data)
            self.journal.write("dump failed", rc=call.rc)
            failure = self.runner.failure(call)
            if not self.dump_opts.get("lazy_pages") and self.left_behind():
                # CRIU undoes a dump that fails by itself (the tree resumed, the network
                # unlocked), not one that was killed: the kernel resumes the tree then, but
                # CRIU's network lock and the sockets' repair mode stay behind
                self.resume_source(f"after the failed dump (rc={call.rc})")
            raise CriticalPathFailed(f"{failure}; {self.where_said()}", "final_dump")
        self._record("final_dump", data)
        self.dumped = True
        self.journal.where = (
            "source (stopped)" if self.leave_stopped else "nowhere (checkpointed on the source)"
        )
        self.journal.write("dumped", pids=tree_pids(int(self.dump_opts["pid"])))

    def transfer(self) -> None:
        assert self.master is not None
        self.phase = "transfer"
        p = self.params
        request = request_from_options(
            p["transfer"],
            p["paths"],
            p["aws"],
            verify=p["verify"],
            stage="final",
            page_server=bool(self.dump_opts.get("page_server")),
            fault="interrupt" if p["fault"] == "interrupt" else "none",
            ssh_options=self.master.options,
        )
        backend = backend_for(request.method, request.compress)
        if p["fault"] == "disk_full":
            self.fill_destination()
        started_at, started = time.time(), time.monotonic()
        try:
            outcome = transfer_send(request, self.run_local, backend)
            sent = outcome.record("final")
            handover = self.move_volume() if self.volumes is not None else None
            if p["fault"] == "corrupt_image":
                self.corrupt_on_destination()
            received = (
                backend.receive(request, self.master.runner(p["timeout"]))
                if backend.two_sided
                else None
            )
        except (TransferError, AttachError, ValueError) as exc:
            self._step("transfer", started, time.monotonic())
            self.journal.write("transfer failed")
            raise CriticalPathFailed(
                f"{request.method} transfer from {self.host} failed: {exc}", "transfer"
            ) from exc
        verify = sent.get("verify", "off")
        problems: list[str] = []
        if outcome.manifest is not None and isinstance(verify, dict):
            t_check = time.monotonic()
            rc, out, err = self.master.run(
                ["sha256sum", "--check", "--quiet", "--strict"],
                p["timeout"],
                stdin=sha256sum_check_input(outcome.manifest).encode(),
            )
            problems = sha256sum_problems(rc, out + err, outcome.manifest)
            verify = {
                **verify,
                "destination_s": round(time.monotonic() - t_check, 6),
                "ok": not problems,
                "mismatches": problems,
            }
        self._step("transfer", started, time.monotonic())
        # the same record as the stepwise send + receive: totals over send, receive, check
        record = combine_sides(sent, received.as_dict() if received else None, verify, handover)
        record["dest_paths"] = sorted({*sent.get("dest_paths", []), *record["dest_paths"]})
        record["started_at"] = started_at
        self._record("transfer", record)
        if problems:
            self.journal.write("transfer verification failed")
            raise CriticalPathFailed(
                f"checksum mismatch on the destination after the {request.method} transfer, so "
                f"the restore is not attempted: {'; '.join(problems)}",
                "transfer",
            )
        self.journal.write("transferred", dest_paths=record.get("dest_paths", []))

    def move_volume(self) -> dict[str, Any]:
        """transfer=ebs: the volume, unmounted here by the send, goes to the destination - each
        API call and wait timed, as the control node's move on the stepwise path."""
        assert self.volumes is not None
        handover = self.params["handover"]
        t0 = time.monotonic()
        self.journal.write("volume moving", volume_id=handover["volume_id"])
        steps = self.volumes.move(
            handover["volume_id"], handover["instance_id"], handover["timeout_s"]
        )
        self.journal.write(
            "volume moved", volume_id=handover["volume_id"], instance_id=handover["instance_id"]
        )
        return {
            "what": f"{self.host} (the source) moved the EBS volume",
            "implementation": self.volumes.kind,
            "duration_s": round(time.monotonic() - t0, 6),
            "steps": steps,
        }

    def fill_destination(self) -> None:
        """inject_fault=disk_full: the destination's images filesystem fills up (after the
        space check; the filler lies in the checkpoint folder, which the cleanup removes)."""
        assert self.master is not None
        folder = str(Path(self.restore_opts["log_file"]).parent)
        rc, out, err = self.master.run(["sh", "-c", DISK_FULL_SH, "disk_full", folder], 120)
        if rc != 0:
            raise TransferError(f"inject_fault=disk_full failed on the destination: {err}")
        path, _, size = out.strip().rpartition(" ")
        self._record("fault", {"fault": "disk_full", "file": path, "bytes": int(size or 0)})

    def corrupt_on_destination(self) -> None:
        """inject_fault=corrupt_image: one byte of the largest page image flips there."""
        assert self.master is not None
        folder = self.restore_opts["images_dir"]
        rc, out, err = self.master.run(["sh", "-c", CORRUPT_PAGE_IMAGE_SH, "corrupt", folder], 60)
        if rc != 0:
            raise TransferError(f"inject_fault=corrupt_image failed on the destination: {err}")
        self._record("fault", {"fault": "corrupt_image", "corrupted": parse_corruption(out)})

    def restore(self) -> None:
        assert self.master is not None
        self.phase = "restore"
        daemon = self.params["lazy_pages_daemon"]
        if daemon:
            self.start_lazy_pages(dict(daemon))
        self.journal.write("restore started")
        # the restore runs there, timed here: its end is on the source's clock too
        call = self.remote_runner.run(
            "restore", self.restore_opts, self.params["timeout"], via=self.on_destination
        )
        self._step("restore", call.monotonic_start, call.monotonic_end)
        # timed here (clock: source), run there (ran_on: where the workload now is)
        data = call.metrics(
            images_dir=self.restore_opts["images_dir"],
            cmd=call.argv,
            clock="source",
            ran_on="destination",
        )
        if not call.ok:
            # ssh's own failure (255) or no answer: the restore may have run there
            self.restore_unknown = call.rc == 255 or call.timed_out
            log_text = (self.master.read_bytes(call.log_file) or b"").decode(errors="replace")
            data.update(failed=True, rc=call.rc, log_tail=log_tail(log_text))
            self._record("restore", data)
            self.journal.write("restore failed", rc=call.rc, outcome_unknown=self.restore_unknown)
            raise CriticalPathFailed(
                f"criu restore failed on the destination (rc={call.rc}): "
                f"{call.reason(log_text) or 'no error line'}; log: {call.log_file}",
                "restore",
            )
        self.restored = True
        # off the critical path: the restored PID and CRIU's own figures
        data["pid"] = self.remote_pid(self.restore_opts["pidfile"])
        try:
            data["stats"] = self.remote_stats()
        except CriuStatsError as exc:  # the tree runs there: a bad stats image must not hide it
            data["stats"], data["stats_error"] = {}, str(exc)
        self._record("restore", data)
        self.journal.where = (
            "destination (the source's copy still stopped)" if self.leave_stopped else "destination"
        )
        self.journal.write("restored", pid=data["pid"])

    def start_lazy_pages(self, daemon: dict[str, Any]) -> None:
        """criu lazy-pages on the destination, after the transfer (it reads the images), with
        what criu_daemon state=stopped needs beside its pidfile."""
        assert self.master is not None
        call = self.remote_runner.run(
            "lazy-pages", daemon, self.params["timeout"], via=self.on_destination
        )
        pid = self.remote_pid(daemon["pidfile"])
        if not call.ok or pid is None:
            raise CriticalPathFailed(
                f"criu lazy-pages did not start on the destination (rc={call.rc}): "
                f"{log_tail(call.output, 3)}; log: {call.log_file}",
                "restore",
            )
        meta = json.dumps(daemon_meta("lazy-pages", call, pid, daemon))
        meta_file = str(ProcessFiles.at(daemon["pidfile"]).meta_file)
        self.master.run(umasked(["sh", "-c", 'cat > "$1"', "meta", meta_file]), 30, meta.encode())

    def on_destination(self, argv: list[str]) -> list[str]:
        """The ssh argv that runs a CRIU call on the destination over the master, with the
        private umask (its images, log and pidfile 0600)."""
        assert self.master is not None
        return self.master.argv(umasked(argv))

    def remote_pid(self, pidfile: str) -> int | None:
        text = (self.master.read_bytes(pidfile) or b"").decode().strip() if self.master else ""
        return int(text) if text.isdigit() else None

    def remote_stats(self) -> dict[str, Any]:
        """The destination's stats-restore, decoded here."""
        assert self.master is not None
        raw = self.master.read_bytes(f"{self.restore_opts['images_dir']}/stats-restore")
        if not raw:
            return {}
        with tempfile.NamedTemporaryFile(suffix=".img") as image:
            image.write(raw)
            image.flush()
            return summarize_stats_image(image.name).get("restore", {})

    def left_behind(self) -> bool:
        """Whether a failed dump left the source's tree stopped or CRIU's network lock taken."""
        if is_stopped(tree_states(tree_pids(int(self.dump_opts["pid"])))):
            return True
        if not self.run_id:
            return False
        rc, out, _err = self.run_local(["nft", "list", "tables"])
        return rc == 0 and bool(lock_tables(out, self.run_id))

    def end_source(self) -> None:
        """The destination runs the workload: the source's stopped copy ends (and a TCP
        workload's network lock, which CRIU leaves after a dump that succeeded, goes)."""
        pid = int(self.dump_opts["pid"])
        if self.leave_stopped:
            self.source_tree = {"action": "ended", **kill_tree(pid, self.run_local, self.run_id)}
        elif (
            self.dump_opts.get("tcp_established")
            and not self.dump_opts.get("lazy_pages")
            and self.run_id
        ):
            self.source_tree = {"action": "unlocked", **remove_lock(self.run_local, self.run_id)}
        else:
            return
        self.journal.where = "destination"
        self.journal.write("source ended", **self.source_tree)

    def resume_source(self, reason: str) -> None:
        """Let the source's tree run on where it is (stopped by --leave-stopped, or left with
        CRIU's network lock by a dump killed half way)."""
        pid = int(self.dump_opts["pid"])
        done = resume_tree(pid, self.run_local, self.run_id)
        self.source_tree = {"action": "resumed", "reason": reason, **done}
        self.journal.where = "source" if done["resumed"] else "nowhere (the source's tree is gone)"
        self.journal.write("source resumed", **self.source_tree)
        if done["resumed"]:
            self._record("source_resumed", {"pid": pid, **self.source_tree})

    def settle_source(self, failure: CriticalPathFailed) -> str:
        """After a failure past the dump (--leave-stopped): resume the source's copy unless the
        destination may run the workload; what the failure message adds."""
        if not (self.leave_stopped and self.dumped) or self.restored:
            return ""
        if self.restore_unknown:
            running = self.confirm_restore()
            if running is True:
                self.end_source()
                return (
                    "the connection died during the restore, but the destination runs the "
                    "workload: the source's stopped copy was ended"
                )
            if running is None:
                self.journal.where = (
                    "unknown (the source's copy stopped; the destination may run it)"
                )
                self.source_tree = {
                    "action": "kept stopped",
                    "pids": tree_pids(int(self.dump_opts["pid"])),
                }
                self.journal.write("restore outcome unknown", **self.source_tree)
                return (
                    f"the destination cannot be reached to tell whether the restore ran there: "
                    f"the workload's tree is kept stopped on {self.host}; run playbooks/recover.yml "
                    "once the destination answers (journal: " + str(self.journal.path) + ")"
                )
        self.resume_source(f"after the failed {failure.phase}")
        return self.where_said()

    def confirm_restore(self) -> bool | None:
        """Whether the destination runs the restored tree (None: it cannot be reached)."""
        request = request_from_options(
            self.params["transfer"], self.params["paths"], self.params["aws"]
        )
        master = SshMaster(request)
        try:
            master.open(timeout_s=float(self.params["confirm_timeout"]))
        except SshMasterError:
            return None
        try:
            text = (master.read_bytes(self.restore_opts["pidfile"]) or b"").decode().strip()
            if not text.isdigit():
                return False
            rc, _out, _err = master.run(["kill", "-0", text], 30)
            return rc == 0
        finally:
            master.close()

    def where_said(self) -> str:
        where = self.journal.where
        if where == "source":
            return f"the workload runs again on the source {self.host}, where it was"
        return f"the workload is: {where}"

    def run_local(self, argv: list[str], stdin: bytes | None = None) -> tuple[int, str, str]:
        if stdin is None:
            return self.module.run_command(argv, check_rc=False)
        return self.module.run_command(argv, check_rc=False, data=stdin, binary_data=True)

    # -- the call ----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        failure: CriticalPathFailed | None = None
        try:
            self.prepare()
            self.dump()
            self.transfer()
            self.restore()
        except CriticalPathFailed as exc:
            failure = exc
        except Exception as exc:  # reported with what was done (dumped!), never a traceback
            failure = CriticalPathFailed(
                f"unexpected error during the {self.phase} step: {type(exc).__name__}: {exc}",
                self.phase,
            )
        settled = ""
        try:
            if failure is None:
                self.end_source()
            else:
                settled = self.settle_source(failure)
        except Exception as exc:  # the journal says what is left to a recovery
            settled = f"the source's tree could not be settled: {type(exc).__name__}: {exc}"
            self.journal.write("settling failed", error=settled)
        finally:
            if self.master is not None:
                self.master.close()
        result = self.outcome()
        if failure is not None:
            message = str(failure) + (
                f"; {settled}" if settled and settled not in str(failure) else ""
            )
            result.update(failed=True, msg=message, failed_phase=failure.phase)
        return result

    def outcome(self) -> dict[str, Any]:
        restore = next(
            (
                item["migration_metrics"]["data"]
                for item in self.results
                if item["migration_metrics"]["phase"] == "restore"
            ),
            {},
        )
        downtime = self.steps["restore"][1] if self.restored else None
        phases_s = sum(end - start for start, end in self.steps.values())
        data = {
            "path": "fused",
            "clock": f"monotonic clock of {self.host} (the source)",
            "downtime_s": downtime,
            "steps": self.steps,
            "phases_s": round(phases_s, 6),
            "orchestration_gap_s": round(downtime - phases_s, 6) if downtime is not None else None,
            "dumped": self.dumped,
            "restored": self.restored,
            "journal": str(self.journal.path),
            "where": self.journal.where,
            "leave_stopped": self.leave_stopped,
            "space": self.space,
            "source_tree": self.source_tree,
        }
        self.journal.write("done" if self.restored else "stopped", downtime_s=downtime)
        return {
            "changed": True,
            "dumped": self.dumped,
            "restored": self.restored,
            "downtime_s": downtime,
            "restore": restore if self.restored else {},
            "where": self.journal.where,
            "source_tree": self.source_tree,
            "plan": self.plan(),
            "steps": self.steps,
            "results": self.results,
            "migration_metrics": {"phase": "critical_path", "data": data},
        }


def main() -> None:
    private_umask()  # the experiment's files: 0600 / 0700 (module_utils/private_files.py)
    module = AnsibleModule(
        argument_spec={
            "criu_bin": {"type": "path"},
            "dump": {"type": "dict", "required": True},
            "lazy_dump_pidfile": {"type": "path"},
            "paths": {"type": "list", "elements": "path", "required": True},
            "transfer": {"type": "dict", "required": True, "options": TRANSFER_OPTIONS},
            "aws": {"type": "dict", "options": AWS_OPTIONS},
            "verify": {"type": "bool", "default": False},
            "fault": {
                "type": "str",
                "default": "none",
                "choices": [
                    "none",
                    "interrupt",
                    "corrupt_image",
                    "dump_fails",
                    "dump_crashes",
                    "disk_full",
                ],
            },
            "working_dir": {"type": "path"},
            "space_margin_pct": {"type": "int", "default": 10},
            "space_reserve_mb": {"type": "int", "default": 8},
            "confirm_timeout": {"type": "int", "default": 20},
            "lazy_pages_daemon": {"type": "dict"},
            "handover": {
                "type": "dict",
                "options": {
                    "volume_id": {"type": "str", "required": True},
                    "instance_id": {"type": "str", "required": True},
                    "implementation": {
                        "type": "str",
                        "default": "aws",
                        "choices": ["aws", "lab"],
                    },
                    "lab_backing_dir": {"type": "path"},
                    "endpoint_url": {"type": "str"},
                    "timeout_s": {"type": "float", "default": 300.0},
                    "no_device": {"type": "bool", "default": False},
                },
            },
            "restore": {"type": "dict", "required": True},
            "journal": {"type": "path", "required": True},
            "timeout": {"type": "int", "default": 600},
        },
        supports_check_mode=True,
    )
    path = CriticalPath(module)
    try:  # before anything runs: options CRIU cannot take fail here, not after the freeze
        plan = path.plan()
    except ValueError as exc:
        module.fail_json(msg=f"critical_path: {exc}")
    if module.check_mode:
        module.exit_json(changed=True, plan=plan, msg="check mode: nothing was run")
    if module.params["dump"].get("lazy_pages") and not module.params["lazy_dump_pidfile"]:
        module.fail_json(msg="a network post-copy dump (dump.lazy_pages) needs lazy_dump_pidfile")
    # detached: a control node that dies now does not stop a started critical path
    journal = Path(module.params["journal"])
    result = run_detached(path.run, journal.with_name(f"{journal.stem}.result.json"))
    if result.get("failed"):
        module.fail_json(**result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
