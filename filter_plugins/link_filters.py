"""Jinja filters for the lab's link profiles (config/link_profiles.yaml)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "module_utils"))

from link_profiles import PROFILES_FILE, load_profiles, resolve


def link_profile(name: str, path: str = str(PROFILES_FILE)) -> dict[str, Any]:
    """The profile called `name` as a plain dict (what library/lab_link.py takes); an
    unknown name fails naming the known ones."""
    return resolve(str(name), load_profiles(path)).as_dict()


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"link_profile": link_profile}
