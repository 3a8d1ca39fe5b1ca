"""run_experiment.py's parts: the seed's command line and config files mapped to the suite's
variables, one experiment through ansible-runner with live progress, sweeps with
repetitions, and the report (CSV, plots, HTML).

Controller-side only (the control node's .venv): the nodes never see this package. The
pure parts (flags, config files, statistics, CSV rows, plots, HTML) import nothing from
Ansible; `launch` is the one module that drives it.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The suite's plain-Python modules (SETTINGS, the workload registry, metrics_report), which
# import each other by their bare names, as the controller plugins do.
if str(REPO / "module_utils") not in sys.path:
    sys.path.insert(0, str(REPO / "module_utils"))
