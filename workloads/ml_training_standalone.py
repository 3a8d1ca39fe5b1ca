#!/usr/bin/env python3
"""ml_training workload: a torch MLP trained on CPU with Adam, on synthetic data.

The model sizes are the seed's (layer sizes exact): small 256 -> 512,256,128 -> 10 on 10K
samples, medium 512 -> 1024,512,256,128 -> 100 on 50K, large 1024 -> 2048,1024,512,256,128 ->
1000 on 100K. Inputs are Gaussian from a fixed seed, labels come from a fixed random linear
"teacher", and each epoch visits the samples in a seeded permutation.

Training runs in chunks of about 0.5 s on a copy of the model and optimizer; the chunk's line
(global step, loss, CRC32 of the parameters' and of Adam's state bytes) is written and only
then the copy becomes the live state. A freeze anywhere therefore leaves the live state equal
to the last line, and after a restore both CRC32s are recomputed from memory before the next
step.

Single file on purpose: it is copied alone to bare nodes (stdlib + torch). The protocol part
(`Protocol`) is repeated in every workload script; see docs/architecture.md.
"""

from __future__ import annotations

import argparse
import copy
import ctypes
import json
import math
import os
import signal
import socket
import sys
import time
import traceback
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import torch
except ImportError:  # argument parsing needs only the stdlib; work() reports it
    torch = None

SEED = 20240611
CHUNK_S = 0.5  # one progress line per ~0.5 s of training
# model size: input, hidden layers, output (classes), default dataset size
MODELS: dict[str, tuple[int, tuple[int, ...], int, int]] = {
    "small": (256, (512, 256, 128), 10, 10_000),
    "medium": (512, (1024, 512, 256, 128), 100, 50_000),
    "large": (1024, (2048, 1024, 512, 256, 128), 1000, 100_000),
}


# --- the suite's workload protocol (same shape in every *_standalone.py) ------------------
class Protocol:
    """Ready file, progress.log lines, restore detection by host name, flag, finish."""

    def __init__(self, working_dir: Path, restored_fields: Callable[[], dict[str, Any]]) -> None:
        self.working_dir = working_dir
        self.flag = working_dir / "checkpoint_flag"
        self.restored_fields = restored_fields
        # Append mode: CRIU accepts a file open for writing whose size changed only then.
        self.log = open(working_dir / "progress.log", "a", buffering=1)  # noqa: SIM115
        self.seq = 0
        self.host = socket.gethostname()

    def ready(self) -> None:
        tmp = self.working_dir / ".checkpoint_ready.tmp"
        tmp.write_text(f"ready:{os.getpid()}")
        tmp.replace(self.working_dir / "checkpoint_ready")

    def _write(self, fields: dict[str, Any], ts: float | None = None) -> None:
        host = socket.gethostname()
        self.seq += 1
        record = {"seq": self.seq, "ts": ts if ts is not None else time.time(), "host": host}
        self.log.write(json.dumps({**record, **fields}) + "\n")
        self.host = host

    def check_restore(self) -> bool:
        """After a host change, log the state recomputed from memory before any more work."""
        if socket.gethostname() == self.host:
            return False
        detected = time.time()
        fields = self.restored_fields()
        fields["verify_s"] = round(time.time() - detected, 3)
        self._write({"event": "restored", **fields}, ts=detected)
        return True

    def line(self, **fields: Any) -> None:
        self.check_restore()
        self._write(fields)

    def running(self) -> bool:
        self.check_restore()
        return self.flag.exists()

    def sleep(self, seconds: float) -> None:
        # Counted in slices, not against a clock deadline: clocks differ between hosts.
        remaining = seconds
        while remaining > 0 and self.running():
            step = min(remaining, 0.1)
            time.sleep(step)
            remaining -= step

    def finish(self) -> None:
        self.check_restore()
        self._write({"event": "finished"})
        print("restore completed", flush=True)


def run_protocol(
    parser: argparse.ArgumentParser, work: Callable[[argparse.Namespace, Path], None]
) -> int:
    args = parser.parse_args()
    working_dir = Path(args.working_dir).resolve()
    working_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds: children are stopped
    try:
        work(args, working_dir)
    except Exception:
        (working_dir / "workload_error.log").write_text(traceback.format_exc())
        return 1
    return 0


def bounded(
    kind: type, low: float | None = None, high: float | None = None
) -> Callable[[str], Any]:
    """An argparse type: `kind` within [low, high]."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if kind is float and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if low is not None and value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        if high is not None and value > high:
            raise argparse.ArgumentTypeError(f"{value} is above the maximum {high}")
        return value

    return parse


# --- the workload ---------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--working-dir", required=True, help="protocol files live here")
    parser.add_argument(
        "--model-size", choices=list(MODELS), default="medium", help="the seed's MLP sizes"
    )
    parser.add_argument("--batch-size", type=bounded(int, 1), default=64, help="samples per step")
    parser.add_argument(
        "--epochs", type=bounded(int, 0), default=0, help="passes over the data; 0 = forever"
    )
    parser.add_argument(
        "--learning-rate", type=bounded(float, 0.0), default=0.001, help="Adam's lr"
    )
    parser.add_argument(
        "--dataset-size",
        type=bounded(int, 0),
        default=0,
        help="samples; 0 = the model size's default",
    )
    return parser


@dataclass
class TrainState:
    model: Any
    optimizer: Any
    global_step: int = 0
    epoch: int = 0
    batch: int = 0  # next batch within the epoch
    loss: float | None = None


def tensor_crc(tensor: Any, crc: int) -> int:
    data = tensor.detach().contiguous()
    return zlib.crc32(ctypes.string_at(data.data_ptr(), data.numel() * data.element_size()), crc)


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        inputs, hidden, classes, default_size = MODELS[args.model_size]
        self.samples = args.dataset_size or default_size
        self.batch_size = args.batch_size
        self.epochs = args.epochs
        self.batches = math.ceil(self.samples / self.batch_size)
        generator = torch.Generator().manual_seed(SEED)
        self.x = torch.randn(self.samples, inputs, generator=generator)
        teacher = torch.randn(inputs, classes, generator=generator)
        self.y = torch.cat([(part @ teacher).argmax(1) for part in self.x.split(4096)])
        torch.manual_seed(SEED)
        layers: list[Any] = []
        for width_in, width_out in zip((inputs, *hidden[:-1]), hidden, strict=True):
            layers += [torch.nn.Linear(width_in, width_out), torch.nn.ReLU()]
        model = torch.nn.Sequential(*layers, torch.nn.Linear(hidden[-1], classes))
        optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)
        self.state = TrainState(model, optimizer)
        self.parameters = sum(p.numel() for p in model.parameters())
        self._permutation: tuple[int, Any] = (-1, None)

    def permutation(self, epoch: int) -> Any:
        if self._permutation[0] != epoch:
            generator = torch.Generator().manual_seed(SEED + epoch)
            self._permutation = (epoch, torch.randperm(self.samples, generator=generator))
        return self._permutation[1]

    def done(self, state: TrainState) -> bool:
        return bool(self.epochs) and state.epoch >= self.epochs

    def chunk(self, proto: Protocol) -> None:
        """~CHUNK_S of steps on a copy; its line is written before the copy goes live."""
        pending = copy.deepcopy(self.state)
        started = time.time()
        steps = 0
        while not self.done(pending):
            order = self.permutation(pending.epoch)
            index = order[pending.batch * self.batch_size : (pending.batch + 1) * self.batch_size]
            pending.optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(pending.model(self.x[index]), self.y[index])
            loss.backward()
            pending.optimizer.step()
            pending.loss = loss.detach().item()
            pending.global_step += 1
            pending.batch += 1
            if pending.batch == self.batches:
                pending.epoch, pending.batch = pending.epoch + 1, 0
            steps += 1
            if time.time() - started >= CHUNK_S or proto.check_restore():
                break
        pending.optimizer.zero_grad(set_to_none=True)  # gradients are not state
        elapsed = time.time() - started
        proto.line(**self.fields(pending, steps, elapsed))
        self.state = pending

    def fields(self, state: TrainState, steps: int, elapsed_s: float) -> dict[str, Any]:
        params_crc = 0
        optimizer_crc = 0
        for param in state.model.parameters():
            params_crc = tensor_crc(param, params_crc)
            adam = state.optimizer.state.get(param, {})
            for name in sorted(adam):
                optimizer_crc = tensor_crc(torch.as_tensor(adam[name]), optimizer_crc)
        return {
            "global_step": state.global_step,
            "epoch": state.epoch,
            "batch": state.batch,
            "loss": None if state.loss is None else round(state.loss, 6),
            "params_checksum": f"{params_crc:08x}",
            "optimizer_checksum": f"{optimizer_crc:08x}",
            "parameters": self.parameters,
            "steps": steps,
            "samples_per_s": round(steps * self.batch_size / elapsed_s, 1)
            if elapsed_s > 0
            else 0.0,
            "done": self.done(state),
        }

    def restored(self) -> dict[str, Any]:
        """Both checksums recomputed from the restored live state, before any further step."""
        return self.fields(self.state, 0, 0.0)


def work(args: argparse.Namespace, working_dir: Path) -> None:
    if torch is None:
        raise RuntimeError(f"torch is not importable by {sys.executable}")
    # Two cores, and fewer threads keep the dumped tree small.
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    trainer = Trainer(args)
    proto = Protocol(working_dir, trainer.restored)
    proto.ready()
    while proto.running():
        if trainer.done(trainer.state):
            proto.line(**trainer.fields(trainer.state, 0, 0.0))
            proto.sleep(CHUNK_S)
        else:
            trainer.chunk(proto)
    proto.finish()


if __name__ == "__main__":
    sys.exit(run_protocol(build_parser(), work))
