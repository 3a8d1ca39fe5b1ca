"""Consistency checks across the suite: module docs render, defaults agree, config wiring."""

from __future__ import annotations

import ast
import configparser
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
MODULES = sorted(p.stem for p in (REPO / "library").glob("*.py"))


def module_docs(name: str) -> dict[str, str]:
    """DOCUMENTATION / EXAMPLES / RETURN strings of a module, read without importing it."""
    tree = ast.parse((REPO / "library" / f"{name}.py").read_text())
    docs: dict[str, str] = {}
    for node in tree.body:
        target = node.targets[0] if isinstance(node, ast.Assign) else None
        if isinstance(target, ast.Name) and target.id in ("DOCUMENTATION", "EXAMPLES", "RETURN"):
            docs[target.id] = ast.literal_eval(node.value)
    return docs


def test_ansible_doc_renders_every_module() -> None:
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "ansible-doc"), "-M", str(REPO / "library"), *MODULES],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ERROR" not in proc.stderr
    for name in MODULES:
        assert f"library/{name}.py" in proc.stdout, name


@pytest.mark.parametrize("name", MODULES)
def test_module_documents_check_mode_examples_and_returns(name: str) -> None:
    docs = module_docs(name)
    assert set(docs) == {"DOCUMENTATION", "EXAMPLES", "RETURN"}
    documentation = yaml.safe_load(docs["DOCUMENTATION"])
    assert documentation["module"] == name
    assert "check_mode" in documentation["attributes"]
    assert yaml.safe_load(docs["EXAMPLES"])  # parses and is not empty
    returns = yaml.safe_load(docs["RETURN"]) or {}
    for key, spec in returns.items():
        assert {"description", "returned", "type"} <= set(spec), f"{name}: RETURN {key}"


def test_every_setting_has_its_one_default_in_group_vars_all() -> None:
    import experiment_plan

    group_vars = yaml.safe_load((REPO / "group_vars" / "all.yml").read_text())
    for name, spec in experiment_plan.SETTINGS.items():
        assert name in group_vars, f"{name} has no seed default in group_vars/all.yml"
        assert experiment_plan.param_errors(spec, group_vars[name]) == [], name
        # the table holds types and limits only: the default is written once
        assert spec.default is None, f"{name}: a second default in experiment_plan"


def test_the_readme_settings_table_is_generated_from_the_rules() -> None:
    proc = subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "scripts/settings_table.py", "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_roles_never_re_default_a_setting() -> None:
    """Roles take the validated migration_settings; a `| default(...)` on one would be a
    second default that silently disagrees with group_vars/all.yml."""
    import re

    pattern = re.compile(r"migration_settings\.(\w+)\s*\|\s*default\(")
    for path in [*REPO.glob("roles/*/*/*.yml"), REPO / "migrate.yml"]:
        found = pattern.findall(path.read_text())
        assert not found, f"{path}: re-defaults {found}"


def test_the_transfer_doc_fragment_documents_the_shared_options() -> None:
    from transfer_backends import TRANSFER_OPTIONS

    text = (REPO / "doc_fragments" / "transfer.py").read_text()
    docs = yaml.safe_load(ast.literal_eval(text[text.index('r"""') + 1 : text.rindex('"""') + 3]))
    documented = docs["options"]["transfer"]["suboptions"]
    assert set(documented) == set(TRANSFER_OPTIONS)
    for name, spec in TRANSFER_OPTIONS.items():
        doc = documented[name]
        assert doc["type"] == spec["type"], name
        assert doc.get("default") == spec.get("default"), name
        assert doc.get("choices") == spec.get("choices"), name


def test_ansible_cfg_wires_the_plugin_folders_and_the_lab() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "ansible.cfg")
    defaults = cfg["defaults"]
    assert defaults["inventory"] == "inventories/lab/hosts.yml"
    for key, folder in (
        ("library", "library"),
        ("module_utils", "module_utils"),
        ("filter_plugins", "filter_plugins"),
        ("callback_plugins", "callback_plugins"),
        ("roles_path", "roles"),
    ):
        assert defaults[key] == folder and (REPO / folder).is_dir()
    assert "migration_metrics" in defaults["callbacks_enabled"]
    assert defaults["home"] == ".ansible"
    assert cfg["ssh_connection"].getboolean("pipelining")
    assert "ControlPersist" in cfg["ssh_connection"]["ssh_args"]
    ignored = (REPO / ".gitignore").read_text()
    assert "/.ansible/" in ignored and "/.venv/" in ignored


def test_every_role_used_by_migrate_yml_exists_with_a_phase() -> None:
    import metrics_report

    text = (REPO / "migrate.yml").read_text()
    roles = {
        line.split("name:")[1].strip()
        for line in text.splitlines()
        if "name:" in line
        and "import_role" not in line
        and line.strip().startswith("name:")
        and (REPO / "roles" / line.split("name:")[1].strip()).is_dir()
    }
    assert roles, "migrate.yml imports no roles?"
    for role in roles:
        assert role in metrics_report.ROLE_PHASES, f"role {role} has no phase"


def test_no_collection_is_needed() -> None:
    """Galaxy is unreachable here: requirements.yml lists nothing, and no task uses a collection."""
    assert yaml.safe_load((REPO / "requirements.yml").read_text()) == {
        "collections": [],
        "roles": [],
    }
    for path in [
        *REPO.glob("roles/*/tasks/*.yml"),
        *REPO.glob("playbooks/*.yml"),
        REPO / "migrate.yml",
    ]:
        for line in path.read_text().splitlines():
            word = line.strip().rstrip(":")
            if word.count(".") == 2 and " " not in word and word.islower():
                assert word.startswith("ansible.builtin."), f"{path}: {word}"


def test_the_migrate_plays_serial_default_is_group_vars_pairs_at_once() -> None:
    """A play keyword cannot see group_vars, so migrate.yml repeats that one default."""
    group_vars = yaml.safe_load((REPO / "group_vars" / "all.yml").read_text())
    plays = yaml.safe_load((REPO / "migrate.yml").read_text())
    migrate = next(play for play in plays if play["hosts"] == "migration_sources")
    assert migrate["serial"] == f"{{{{ pairs_at_once | default({group_vars['pairs_at_once']}) }}}}"


def test_no_two_test_modules_share_a_basename() -> None:
    """pytest imports test modules by basename (rootdir import mode, no __init__.py): two
    modules of one name in tests/unit and tests/integration stop the whole collection."""
    seen: dict[str, list[str]] = {}
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        seen.setdefault(path.name, []).append(str(path.relative_to(REPO)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
