"""Config files, their precedence and the choice of inventory.

Two layouts, told apart per top-level key:

- **flat** (the presets in config/experiments/*.yaml, which `ansible-playbook -e @FILE`
  reads too): `variable: value`, every key a variable of the suite;
- **nested** (the seed's config/default.yaml): the sections `experiment`, `nodes`,
  `checkpoint`, `transfer` (and `workload`) hold mappings. The seed's keys map to the
  suite's variables (`checkpoint.strategy.mode` -> `checkpoint_strategy`,
  `transfer.method` -> `transfer`, `experiment.workload_type` -> `workload`, ...); any
  other key in a section is a variable by its own name or by the section's prefix
  (`transfer.cipher` -> `transfer_cipher`, `checkpoint.strategy.predump_mode` ->
  `predump_mode`). `nodes` names the hosts (see `choose_inventory`).

`${VAR}` in a value is replaced by the environment variable VAR (empty when unset), as the
seed did. A null value means "not set here". An unknown key is refused with the file and
the key's dotted path.

Precedence, lowest first: group_vars/all.yml < the inventory's group_vars <
config/default.yaml < each -c file in order < flags and --set.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
SECTIONS = ("experiment", "nodes", "checkpoint", "transfer", "workload")
# The seed's keys whose suite variable has another name.
SEED_PATHS = {
    "experiment.name": "experiment_name",
    "experiment.workload_type": "workload",
    "workload.type": "workload",
    "checkpoint.strategy.mode": "checkpoint_strategy",
    "transfer.method": "transfer",
}
NODE_KEYS = ("ssh_user", "ssh_key", "source", "destination")
NODE_HOST_KEYS = ("ip", "name")
# Names older layouts used, refused with the suite's name.
FLAT_RENAMED = {"strategy": "checkpoint_strategy (nested layout: checkpoint.strategy.mode)"}
# A node file (config/servers.yaml) is an inventory, not a config file.
NODE_FILE_KEYS = ("all_nodes",)


class ConfigError(ValueError):
    """A config file (or a flag) that cannot be used; the message names the file and key."""


@dataclass
class Nodes:
    """The `nodes` section: where the seed found its hosts without a servers.yaml."""

    where: str = ""
    ssh_user: str = ""
    ssh_key: str = ""
    source_ip: str = ""
    destination_ip: str = ""
    # the values as written (`${SOURCE_NODE_IP}`), for messages
    written: dict[str, str] = field(default_factory=dict)

    def addresses(self) -> tuple[str, str]:
        return self.source_ip, self.destination_ip


@dataclass
class ConfigFile:
    path: str
    variables: dict[str, Any] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)  # variable -> the key in the file
    nodes: Nodes | None = None
    nested: bool = False


def expand_env(value: Any, environ: Mapping[str, str]) -> Any:
    """`value` with every ${VAR} in its strings replaced from `environ` (empty when unset)."""
    if isinstance(value, str):
        return ENV_REFERENCE.sub(lambda match: environ.get(match.group(1), ""), value)
    if isinstance(value, list):
        return [expand_env(item, environ) for item in value]
    if isinstance(value, Mapping):
        return {key: expand_env(item, environ) for key, item in value.items()}
    return value


def _suggest(key: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, sorted(set(candidates)), n=3, cutoff=0.75)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _unknown(where: str, dotted: str, candidates: Iterable[str], nested: bool) -> ConfigError:
    hint = _suggest(dotted.rsplit(".", 1)[-1], candidates)
    kind = "a variable of the suite" if not nested else "a key of the seed's layout or a variable"
    return ConfigError(f"{where}: unknown key {dotted!r}: not {kind}{hint}")


def _nodes(where: str, section: Any, environ: Mapping[str, str]) -> Nodes:
    if not isinstance(section, Mapping):
        raise ConfigError(
            f"{where}: nodes must be a mapping (ssh_user, ssh_key, source, destination)"
        )
    nodes = Nodes(where=where)
    for key, value in section.items():
        if key not in NODE_KEYS:
            raise ConfigError(
                f"{where}: unknown key 'nodes.{key}' (valid: {', '.join(NODE_KEYS)})"
                + _suggest(str(key), NODE_KEYS)
            )
        if value is None:
            continue
        if key in ("ssh_user", "ssh_key"):
            setattr(nodes, key, str(expand_env(value, environ)).strip())
            continue
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: nodes.{key} must be a mapping with ip (and name)")
        for host_key, _host_value in value.items():
            if host_key not in NODE_HOST_KEYS:
                raise ConfigError(
                    f"{where}: unknown key 'nodes.{key}.{host_key}' (valid: ip, name)"
                )
        written = "" if value.get("ip") is None else str(value.get("ip"))
        nodes.written[key] = written
        setattr(nodes, f"{key}_ip", str(expand_env(written, environ)).strip())
    return nodes


def _resolve_nested(path: tuple[str, ...], known: Collection[str]) -> str | None:
    """The variable a nested key stands for, or None."""
    dotted = ".".join(path)
    if dotted in SEED_PATHS:
        return SEED_PATHS[dotted]
    key = path[-1]
    candidates = [key]
    candidates += [f"{section}_{key}" for section in reversed(path[:-1])]
    for candidate in candidates:
        if candidate in known:
            return candidate
    return None


def parse_config(
    data: Any, where: str, known: Collection[str], environ: Mapping[str, str]
) -> ConfigFile:
    """A parsed YAML document as a ConfigFile (ConfigError names the file and the key)."""
    config = ConfigFile(where)
    if data is None:
        return config
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: a config file is a mapping of keys to values")

    def take(variable: str, value: Any, dotted: str) -> None:
        if variable in config.variables and config.keys[variable] != dotted:
            raise ConfigError(f"{where}: {dotted} and {config.keys[variable]} both set {variable}")
        config.variables[variable] = expand_env(value, environ)
        config.keys[variable] = dotted

    def walk(path: tuple[str, ...], value: Any) -> None:
        dotted = ".".join(path)
        variable = _resolve_nested(path, known)
        if variable is not None and not (
            isinstance(value, Mapping) and variable not in ("workload_defaults",)
        ):
            if value is not None:
                take(variable, value, dotted)
            return
        if isinstance(value, Mapping):
            for key, item in value.items():
                walk((*path, str(key)), item)
            return
        nested_names = list(known) + [p.rsplit(".", 1)[-1] for p in SEED_PATHS]
        raise _unknown(where, dotted, nested_names, nested=True)

    for key, value in data.items():
        key = str(key)
        if key == "nodes":
            config.nested = True
            config.nodes = _nodes(where, value, environ)
        elif key in SECTIONS and isinstance(value, Mapping):
            config.nested = True
            for inner, item in value.items():
                walk((key, str(inner)), item)
        elif key in FLAT_RENAMED:
            raise ConfigError(
                f"{where}: {key!r} is not read: the setting is called {FLAT_RENAMED[key]} "
                "(`strategy` is an Ansible play keyword)"
            )
        elif key in NODE_FILE_KEYS:
            raise ConfigError(
                f"{where}: {key!r} belongs to a node file (the seed's servers.yaml): put it at "
                "config/servers.yaml or pass it with -i FILE"
            )
        elif key in known:
            if value is not None:
                take(key, value, key)
        else:
            raise _unknown(where, key, [*known, *SECTIONS], nested=False)
    return config


def read_config(
    path: str | Path, known: Collection[str], environ: Mapping[str, str], where: str = ""
) -> ConfigFile:
    """Read and map a config file; ConfigError when it is missing, does not parse or has an
    unknown key. `where`: the file's name in messages (default: the path)."""
    import yaml

    where = where or str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{where} does not parse as YAML{at}: {problem}") from exc
    return parse_config(data, where, known, environ)


def parse_assignment(text: str, where: str = "--set") -> tuple[str, Any]:
    """`key=value` with the value read as YAML (3 -> int, 0.5 -> float, true -> bool)."""
    import yaml

    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
        raise ConfigError(f"{where} {text!r}: expected KEY=VALUE with KEY a variable name")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def known_variables(
    settings: Iterable[str], registry: Mapping[str, Any], defaults_file: Mapping[str, Any]
) -> set[str]:
    """What a config file may set: every setting, every workload parameter, the other
    variables group_vars/all.yml defines (results_root, node paths) and workload_defaults."""
    names = set(settings) | set(defaults_file) | {"workload_defaults"}
    for workload in registry.values():
        names |= set(workload.params)
    return names


# -- precedence ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Layer:
    """One source of values, e.g. ('config/default.yaml', {...})."""

    origin: str
    values: Mapping[str, Any]


def merge_layers(layers: Iterable[Layer]) -> dict[str, tuple[Any, str]]:
    """Every variable's value and the origin of the layer that set it last."""
    merged: dict[str, tuple[Any, str]] = {}
    for layer in layers:
        for name, value in layer.values.items():
            if value is None:
                continue
            merged[name] = (value, layer.origin)
    return merged


# -- the inventory -------------------------------------------------------------------------


@dataclass
class InventoryChoice:
    """Which inventory a run uses, why, and the environment it needs."""

    inventory: str | None  # None: ansible.cfg's default (the local lab)
    why: str
    env: dict[str, str] = field(default_factory=dict)


def _env_inventory(
    repo: Path, source: str, destination: str, nodes: Nodes | None, why: str
) -> InventoryChoice:
    env = {"SOURCE_NODE_IP": source, "DEST_NODE_IP": destination}
    if nodes is not None and nodes.ssh_user:
        env["SSH_USER"] = nodes.ssh_user
    if nodes is not None and nodes.ssh_key:
        env["SSH_KEY_FILE"] = nodes.ssh_key
    return InventoryChoice(str(repo / "inventories" / "env"), why, env)


def resolve_inventory_path(repo: Path, name: str) -> str:
    """A path, or a name under inventories/ (`aws_cross_az` -> inventories/aws_cross_az)."""
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    for candidate in (repo / "inventories" / name, repo / name):
        if candidate.exists():
            return str(candidate)
    raise ConfigError(
        f"-i {name}: no such inventory (a path, or one of: "
        + ", ".join(sorted(p.name for p in (repo / "inventories").iterdir() if p.is_dir()))
        + ")"
    )


def choose_inventory(
    repo: Path,
    inventory: str | None,
    source_ip: str | None,
    dest_ip: str | None,
    nodes: Nodes | None,
    servers_file: Path,
) -> InventoryChoice:
    """The inventory, first match wins:

    1. `-i`;
    2. `--source-ip` and `--dest-ip`: inventories/env with SOURCE_NODE_IP / DEST_NODE_IP
       (and the config's nodes.ssh_user / ssh_key as SSH_USER / SSH_KEY_FILE);
    3. config/servers.yaml when it exists (the seed's node file, as Terraform wrote it);
    4. the config files' nodes.source.ip and nodes.destination.ip when both are set after
       ${VAR} expansion (the seed's fallback, `${SOURCE_NODE_IP}` / `${DEST_NODE_IP}`);
    5. ansible.cfg's default: the local lab.
    """
    if bool(source_ip) != bool(dest_ip):
        given, missing = ("--source-ip", "--dest-ip") if source_ip else ("--dest-ip", "--source-ip")
        raise ConfigError(f"{given} needs {missing} too: a migration has two nodes")
    if inventory and source_ip:
        raise ConfigError("-i and --source-ip/--dest-ip exclude each other: name the nodes once")
    if inventory:
        return InventoryChoice(resolve_inventory_path(repo, inventory), f"-i {inventory}")
    if source_ip and dest_ip:
        return _env_inventory(repo, source_ip, dest_ip, nodes, "--source-ip / --dest-ip")
    if servers_file.exists():
        return InventoryChoice(
            str(servers_file), f"{servers_file.name} exists (the seed's node file)"
        )
    if nodes is not None:
        source, destination = nodes.addresses()
        if source and destination:
            return _env_inventory(
                repo,
                source,
                destination,
                nodes,
                f"nodes.source.ip / nodes.destination.ip of {nodes.where}",
            )
        if source or destination:
            empty = "destination" if source else "source"
            written = nodes.written.get(empty, "")
            unset = ENV_REFERENCE.findall(written)
            reason = f"{', '.join(unset)} is not set" if unset else "it is empty"
            raise ConfigError(
                f"{nodes.where}: nodes.{'source' if source else 'destination'}.ip is set but "
                f"nodes.{empty}.ip ({written!r}) is empty: {reason}"
            )
    return InventoryChoice(None, "the default inventory (ansible.cfg: the local lab)")
