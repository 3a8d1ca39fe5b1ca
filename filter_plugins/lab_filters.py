"""Jinja filters for playbooks/lab.yml."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "module_utils"))

from lab_layout import lab_state_dir


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"lab_state_dir": lab_state_dir}
