#!/usr/bin/env python3
"""The seed's front door: run CRIU live-migration experiments with the seed's flags.

    python3 run_experiment.py --workload memory --mb-size 64
    python3 run_experiment.py -c config/experiments/lazy_pages.yaml
    python3 run_experiment.py --workload memory --sweep mb_size=16,32,64 --repeat 3
    python3 run_experiment.py report results/sweep_<UTC timestamp>
    python3 run_experiment.py --help

Runs with any Python 3: it re-runs itself under the suite's .venv (made by `make setup`),
which holds ansible-core, ansible-runner and matplotlib. The work is in frontdoor/.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent
VENV = REPO / ".venv"
# Set when re-running under the venv, so that a broken venv cannot loop.
REEXEC_MARK = "RUN_EXPERIMENT_REEXEC"


def in_suite_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def ensure_venv() -> None:
    """Re-run this script under .venv/bin/python unless already there."""
    if in_suite_venv():
        return
    python = VENV / "bin" / "python"
    if python.exists() and not os.environ.get(REEXEC_MARK):
        os.environ[REEXEC_MARK] = "1"
        os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])
    try:
        import ansible_runner  # noqa: F401
    except ImportError:
        print(
            "run_experiment.py: the suite's .venv (ansible-runner, ansible-core) is missing: "
            "run `make setup` in " + str(REPO),
            file=sys.stderr,
        )
        sys.exit(2)


def main() -> int:
    ensure_venv()
    sys.path.insert(0, str(REPO))
    from frontdoor.cli import main as cli_main

    try:
        return cli_main(sys.argv[1:])
    except BrokenPipeError:  # `run_experiment.py --help | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
