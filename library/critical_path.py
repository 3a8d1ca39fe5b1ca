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
  - On a failure the module fails with what was done (C(dumped), C(restored) and the
    records); the run's rescue then restores the workload on the source from the same
    images, exactly as after a failed stepwise phase.
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
    description: C(interrupt) cuts the transfer's SSH connection midway; C(corrupt_image)
      flips one byte of the largest page image on the destination after the transfer.
    type: str
    choices: [none, interrupt, corrupt_image]
    default: none
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
migration_metrics:
  description: The path's own figures (phase C(critical_path)).
  returned: always
  type: dict
  sample: {phase: critical_path, data: {path: fused, downtime_s: 1.42}}
"""

import json
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
from ansible.module_utils.ebs_attach import AttachError, Ec2Volumes, volumes_for
from ansible.module_utils.faults import CORRUPT_PAGE_IMAGE_SH, parse_corruption
from ansible.module_utils.private_files import private_umask, umasked
from ansible.module_utils.processes import ProcessFiles
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

    def write(self, step: str, **data: Any) -> None:
        record = {"step": step, "at": time.time(), "monotonic": time.monotonic(), **data}
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
        self.journal.write("prepared", plan=self.plan())

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
        if not call.ok:
            data["failed"] = True
            self._record("final_dump", data)
            self.journal.write("dump failed", rc=call.rc)
            raise CriticalPathFailed(self.runner.failure(call), "final_dump")
        self._record("final_dump", data)
        self.dumped = True
        self.journal.write("dumped")

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
            log_text = (self.master.read_bytes(call.log_file) or b"").decode(errors="replace")
            data.update(failed=True, rc=call.rc, log_tail=log_tail(log_text))
            self._record("restore", data)
            self.journal.write("restore failed", rc=call.rc)
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
        finally:
            if self.master is not None:
                self.master.close()
        result = self.outcome()
        if failure is not None:
            self.module.fail_json(msg=str(failure), failed_phase=failure.phase, **result)
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
        }
        self.journal.write("done" if self.restored else "stopped", downtime_s=downtime)
        return {
            "changed": True,
            "dumped": self.dumped,
            "restored": self.restored,
            "downtime_s": downtime,
            "restore": restore if self.restored else {},
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
                "choices": ["none", "interrupt", "corrupt_image"],
            },
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
    module.exit_json(**path.run())


if __name__ == "__main__":
    main()
