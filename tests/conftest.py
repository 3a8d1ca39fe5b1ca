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
    library/*.py directly. Modules that import each other through `ansible.module_utils`
    need their dependencies aliased first, so failed imports are retried until every file
    is in.
    """
    import ansible.module_utils as ansible_module_utils

    pending = [
        p.stem for p in sorted((REPO / "module_utils").glob("*.py")) if not p.stem.startswith("_")
    ]
    while pending:
        failed: list[str] = []
        for name in pending:
            try:
                module = importlib.import_module(name)
            except ImportError:
                failed.append(name)
                continue
            sys.modules[f"ansible.module_utils.{name}"] = module
            setattr(ansible_module_utils, name, module)
        if len(failed) == len(pending):
            importlib.import_module(failed[0])  # raise the real error
        pending = failed


_alias_module_utils()
