"""Shared test set-up: import paths for the repo's plugin folders."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

for folder in ("module_utils", "library", "filter_plugins", "callback_plugins"):
    path = str(REPO / folder)
    if path not in sys.path:
        sys.path.insert(0, path)


def _alias_module_utils() -> None:
    """Make `ansible.module_utils.<name>` resolve to the repo's module_utils/<name>.py.

    Ansible does this when it bundles a module for a node; the alias lets unit tests import
    library/*.py directly.
    """
    import ansible.module_utils as ansible_module_utils

    for source in sorted((REPO / "module_utils").glob("*.py")):
        name = source.stem
        if name.startswith("_"):
            continue
        module = importlib.import_module(name)
        sys.modules[f"ansible.module_utils.{name}"] = module
        setattr(ansible_module_utils, name, module)


_alias_module_utils()
