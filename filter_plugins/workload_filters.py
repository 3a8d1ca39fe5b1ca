"""Jinja filters over the workload declarations (module_utils/workload_registry.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "module_utils"))

from workload_registry import load_registry, script_argv


def workload_dependencies(directory: str, workloads: str | list[str]) -> dict[str, list[str]]:
    """Union of the declared dependencies of `workloads` ("all" or names)."""
    registry = load_registry(directory)
    names = sorted(registry) if workloads == "all" else list(workloads)
    unknown = [name for name in names if name not in registry]
    if unknown:
        raise ValueError(
            f"unknown workload(s) {', '.join(unknown)}; valid: {', '.join(sorted(registry))}"
        )
    merged: dict[str, list[str]] = {"workloads": names, "apt": [], "python": [], "pip": []}
    for name in names:
        for kind in ("apt", "python", "pip"):
            for item in registry[name].deps.get(kind, []):
                if item not in merged[kind]:
                    merged[kind].append(item)
    return merged


def workload_declaration(directory: str, name: str) -> dict[str, Any]:
    """Workload `name`'s declaration as a plain dict (script, criu, continuity, ports ...)."""
    import yaml

    registry = load_registry(directory)
    if name not in registry:
        raise ValueError(f"unknown workload {name!r}; valid: {', '.join(sorted(registry))}")
    return yaml.safe_load((Path(directory) / f"{name}.yml").read_text())


def workload_command(
    params: dict[str, Any],
    directory: str,
    name: str,
    python: str,
    script_dir: str,
    working_dir: str,
) -> list[str]:
    """The argv that starts workload `name` with resolved `params`."""
    return script_argv(load_registry(directory)[name], params, python, script_dir, working_dir)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "workload_dependencies": workload_dependencies,
            "workload_command": workload_command,
            "workload_declaration": workload_declaration,
        }
