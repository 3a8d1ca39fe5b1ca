"""Every role's meta/argument_specs.yml against what its tasks really read.

ansible-core validates a role's variables against the spec of the entry point it was
entered by (`main`, or the `tasks_from` file) before the role's first task. These tests
keep the specs honest:

- every role has a spec with a `main` entry point, and every `tasks_from` entry point used
  in migrate.yml, playbooks/*.yml or roles/*/tasks/*.yml has one;
- the `migration_settings.<name>` and `migration_flags.<name>` an entry point reads - in its
  task file, the files it imports or includes, the other roles' entry points it imports or
  includes, and the role defaults those use - are exactly the "reads:" list in the
  description of its `migration_settings` / `migration_flags` option, and each is a real
  setting (module_utils/experiment_plan.py SETTINGS) or flag (experiment_plan.migration_flags);
- every variable of a role's defaults/main.yml is documented as an option (the defaults
  themselves live only in defaults/main.yml, never in the spec).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
ROLES_DIR = REPO / "roles"
ROLES = sorted(p.name for p in ROLES_DIR.iterdir() if (p / "tasks" / "main.yml").is_file())
# The files that may enter a role by a `tasks_from` entry point.
CALLERS = sorted(
    [REPO / "migrate.yml", *(REPO / "playbooks").glob("*.yml"), *ROLES_DIR.glob("*/tasks/*.yml")]
)

TASK_INCLUDES = {
    f"{prefix}{action}"
    for prefix in ("", "ansible.builtin.", "ansible.legacy.")
    for action in ("import_tasks", "include_tasks")
}
ROLE_INCLUDES = {
    f"{prefix}{action}"
    for prefix in ("", "ansible.builtin.", "ansible.legacy.")
    for action in ("import_role", "include_role")
}
# The experiment's dicts whose keys the roles read one by one, and the word that starts the
# list of those keys in the option's description.
READS = "reads:"
DICTS = ("migration_settings", "migration_flags")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def spec(role: str, roles_dir: Path = ROLES_DIR) -> dict[str, Any]:
    """The role's argument_specs (entry point -> its spec); empty without a spec file."""
    path = roles_dir / role / "meta" / "argument_specs.yml"
    if not path.is_file():
        return {}
    return (load(path) or {}).get("argument_specs") or {}


def values(node: Any) -> Iterator[str]:
    """Every string value in a loaded YAML document (mapping keys are names, not reads)."""
    if isinstance(node, dict):
        for value in node.values():
            yield from values(value)
    elif isinstance(node, list):
        for value in node:
            yield from values(value)
    elif isinstance(node, str):
        yield node


def mappings(node: Any) -> Iterator[dict[str, Any]]:
    """Every mapping in a loaded YAML document (tasks, blocks, plays, their arguments)."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from mappings(value)
    elif isinstance(node, list):
        for value in node:
            yield from mappings(value)


def role_calls(document: Any) -> Iterator[tuple[str, str]]:
    """(role, entry point) of every import_role / include_role and play `roles:` item."""
    for mapping in mappings(document):
        for key in ROLE_INCLUDES & set(mapping):
            args = mapping[key]
            yield args["name"], args.get("tasks_from", "main")
        for item in (mapping.get("roles") or []) if "hosts" in mapping else []:
            yield (item if isinstance(item, str) else item["role"]), "main"


def task_file(roles_dir: Path, role: str, entry: str) -> Path:
    return roles_dir / role / "tasks" / f"{entry}.yml"


def entry_point_reads(role: str, entry: str, roles_dir: Path = ROLES_DIR) -> list[str]:
    """Every string an entry point's run reads.

    Its task file, the task files it imports or includes, the other roles' entry points it
    imports or includes (recursively), and the values of the defaults of every role visited
    that those strings name (a default is read where it is used).
    """
    strings: list[str] = []
    visited_roles: set[str] = set()
    seen: set[Path] = set()

    def visit(path: Path, owner: str) -> None:
        if path in seen:
            return
        seen.add(path)
        visited_roles.add(owner)
        document = load(path) or []
        strings.extend(values(document))
        for mapping in mappings(document):
            for key in TASK_INCLUDES & set(mapping):
                target = mapping[key]
                target = target["file"] if isinstance(target, dict) else target
                visit(path.parent / target, owner)
        for other, other_entry in role_calls(document):
            visit(task_file(roles_dir, other, other_entry), other)

    visit(task_file(roles_dir, role, entry), role)
    defaults: dict[str, Any] = {}
    for owner in sorted(visited_roles):
        path = roles_dir / owner / "defaults" / "main.yml"
        if path.is_file():
            defaults.update(load(path) or {})
    pending = dict(defaults)
    while True:
        used = [name for name in pending if any(re.search(rf"\b{name}\b", s) for s in strings)]
        if not used:
            return strings
        for name in used:
            strings.extend(values(pending.pop(name)))


def keys_read(strings: list[str], variable: str) -> set[str]:
    """The keys of `variable` read in `strings`: x.key, x['key'], x.get('key')."""
    patterns = (
        rf"\b{variable}\.(?!get\()([A-Za-z_]\w*)",
        rf"\b{variable}\[\s*['\"](\w+)['\"]\s*\]",
        rf"\b{variable}\.get\(\s*['\"](\w+)['\"]",
    )
    return {key for s in strings for pattern in patterns for key in re.findall(pattern, s)}


def role_defaults(role: str) -> dict[str, Any]:
    path = ROLES_DIR / role / "defaults" / "main.yml"
    return (load(path) or {}) if path.is_file() else {}


def description(node: dict[str, Any]) -> str:
    text = node.get("description") or ""
    return " ".join(text) if isinstance(text, list) else str(text)


def listed_reads(option: dict[str, Any]) -> set[str]:
    """The names after "reads:" in an option's description ("reads: none" is empty)."""
    found = re.findall(rf"{READS}\s*([\w\s,]*)", description(option))
    assert len(found) == 1, f'the description must hold one "{READS} a, b, c." list'
    names = {name.strip() for name in found[0].split(",") if name.strip()}
    return set() if names == {"none"} else names


def entry_points() -> list[tuple[str, str]]:
    return [(role, entry) for role in ROLES for entry in spec(role)]


def used_entry_points() -> set[tuple[str, str]]:
    return {call for path in CALLERS for call in role_calls(load(path))}


def mismatches(role: str, entry: str, roles_dir: Path = ROLES_DIR) -> list[str]:
    """How an entry point's spec disagrees with the settings and flags it reads."""
    options = (spec(role, roles_dir)[entry] or {}).get("options") or {}
    strings = entry_point_reads(role, entry, roles_dir)
    problems = []
    for variable in DICTS:
        read = keys_read(strings, variable)
        if variable not in options:
            if read:
                problems.append(f"{variable} is read ({', '.join(sorted(read))}) but no option")
            continue
        listed = listed_reads(options[variable])
        if listed != read:
            problems.append(
                f"{variable}: the spec lists {sorted(listed)}, the tasks read {sorted(read)}"
            )
    return problems


@pytest.mark.parametrize("role", ROLES)
def test_every_role_has_a_spec_with_main(role: str) -> None:
    assert (ROLES_DIR / role / "meta" / "argument_specs.yml").is_file(), role
    assert "main" in spec(role), f"{role}: no main entry point"


def test_every_entry_point_used_has_a_spec() -> None:
    used = used_entry_points()
    assert ("workload_capture", "pre_dump") in used  # the scan finds tasks_from
    assert ("critical_path", "stepwise") in used
    missing = sorted(f"{role}:{entry}" for role, entry in used if entry not in spec(role))
    assert not missing, f"entry points used without a spec: {missing}"


@pytest.mark.parametrize(("role", "entry"), entry_points())
def test_spec_entry_point_is_a_task_file(role: str, entry: str) -> None:
    assert task_file(ROLES_DIR, role, entry).is_file(), f"{role}: no tasks/{entry}.yml"


@pytest.mark.parametrize(("role", "entry"), entry_points())
def test_entry_point_is_documented(role: str, entry: str) -> None:
    point = spec(role)[entry]
    assert point.get("short_description"), f"{role}:{entry}"
    assert description(point), f"{role}:{entry}"
    defaults = role_defaults(role)
    for name, option in (point.get("options") or {}).items():
        where = f"{role}:{entry} option {name}"
        assert option.get("type"), f"{where}: no type"
        assert isinstance(option.get("required"), bool), f"{where}: required must be explicit"
        assert description(option), f"{where}: no description"
        # one place per default: defaults/main.yml (the description says what it means)
        assert "default" not in option, f"{where}: the default belongs in defaults/main.yml"
        assert not (option["required"] and name in defaults), f"{where}: has a default"
        if name in DICTS or name.startswith("migration_"):
            # nested options would reject the keys this entry point does not read
            assert "options" not in option, f"{where}: the dict's keys are not validated"


@pytest.mark.parametrize(("role", "entry"), entry_points())
def test_settings_and_flags_read_are_listed(role: str, entry: str) -> None:
    assert not mismatches(role, entry)


@pytest.mark.parametrize(("role", "entry"), entry_points())
def test_settings_and_flags_read_are_real(role: str, entry: str) -> None:
    import experiment_plan

    strings = entry_point_reads(role, entry)
    settings = keys_read(strings, "migration_settings")
    flags = keys_read(strings, "migration_flags")
    known_flags = set(experiment_plan.migration_flags({}, None))
    assert settings <= set(experiment_plan.SETTINGS), sorted(
        settings - set(experiment_plan.SETTINGS)
    )
    assert flags <= known_flags, sorted(flags - known_flags)
    options = spec(role)[entry].get("options") or {}
    for variable, known in (
        ("migration_settings", experiment_plan.SETTINGS),
        ("migration_flags", known_flags),
    ):
        if variable in options:
            assert listed_reads(options[variable]) <= set(known), f"{role}:{entry} {variable}"


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_an_option(role: str) -> None:
    defaults = role_defaults(role)
    main = spec(role)["main"].get("options") or {}
    missing = sorted(set(defaults) - set(main))
    assert not missing, f"{role}: defaults not documented in the main entry point: {missing}"
    # and each entry point documents the role's defaults it uses
    for entry, point in spec(role).items():
        strings = entry_point_reads(role, entry)
        used = {name for name in defaults if any(re.search(rf"\b{name}\b", s) for s in strings)}
        undocumented = sorted(used - set(point.get("options") or {}))
        assert not undocumented, (
            f"{role}:{entry} reads defaults it does not document: {undocumented}"
        )


def test_a_setting_read_but_not_listed_fails(tmp_path: Path) -> None:
    """The check above catches a role that starts reading a setting its spec omits."""
    roles = tmp_path / "roles"
    for role in ("checkpoint_transfer", "checkpoint_dump", "checkpoint_restore", "critical_path"):
        shutil.copytree(ROLES_DIR / role, roles / role)
    assert not mismatches("critical_path", "stepwise", roles)
    tasks = roles / "checkpoint_transfer" / "tasks" / "main.yml"
    tasks.write_text(
        tasks.read_text()
        + "\n- name: Read one more setting\n  ansible.builtin.debug:\n"
        + "    msg: \"{{ migration_settings.keep_images }} {{ migration_flags['fused'] }}\"\n"
    )
    for role, entry in (("checkpoint_transfer", "main"), ("critical_path", "stepwise")):
        problems = " ".join(mismatches(role, entry, roles))
        assert "keep_images" in problems, (role, entry)
    assert "fused" in " ".join(mismatches("checkpoint_transfer", "main", roles))
