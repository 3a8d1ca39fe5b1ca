"""Structure of the AWS configuration in terraform/, read with python-hcl2.

The AWS provider cannot be downloaded here, so `terraform validate` cannot run on it
(docs/lab.md); these checks cover what the experiments rely on: variables, outputs, the
security-group ports, the instance profile, and the wiring of the provider-free inventory
module (which tests/integration/test_terraform_inventory.py runs with the real CLI).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import hcl2
import pytest

REPO = Path(__file__).resolve().parents[2]
TERRAFORM = REPO / "terraform"
INVENTORY_MODULE = TERRAFORM / "modules" / "inventory"
HCL_MARKERS = {"__is_block__", "__comments__"}


def _unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == '"' else text


def _clean(value: Any) -> Any:
    """python-hcl2 8 keeps string quotes and block markers; drop them."""
    if isinstance(value, dict):
        return {_unquote(k): _clean(v) for k, v in value.items() if k not in HCL_MARKERS}
    if isinstance(value, list):
        return [_clean(item) for item in value]
    if isinstance(value, str):
        return _unquote(value)
    return value


def load_config(folder: Path) -> dict[str, list]:
    """Every top-level block of the folder's *.tf files, merged by block type."""
    config: dict[str, list] = {}
    for path in sorted(folder.glob("*.tf")):
        with path.open(encoding="utf-8") as stream:
            for block_type, blocks in _clean(hcl2.load(stream)).items():
                config.setdefault(block_type, []).extend(blocks)
    return config


def named(config: dict[str, list], block_type: str) -> dict[str, dict]:
    """Blocks with one label (variable, output, module): name → body."""
    return {name: body for block in config.get(block_type, []) for name, body in block.items()}


def typed(config: dict[str, list], block_type: str, kind: str) -> dict[str, dict]:
    """Blocks with two labels (resource, data) of one kind: name → body."""
    found: dict[str, dict] = {}
    for block in config.get(block_type, []):
        for name, body in block.get(kind, {}).items():
            found[name] = body
    return found


@pytest.fixture(scope="module")
def root() -> dict[str, list]:
    return load_config(TERRAFORM)


@pytest.fixture(scope="module")
def module() -> dict[str, list]:
    return load_config(INVENTORY_MODULE)


@pytest.fixture(scope="module")
def variables(root) -> dict[str, dict]:
    return named(root, "variable")


def resolve_port(value: Any, variables: dict[str, dict]) -> int:
    """A literal port, or the default of the `var.` it names."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\$\{var\.(\w+)\}", str(value))
    assert match, f"port {value!r} is neither a number nor a variable"
    return int(variables[match.group(1)]["default"])


def test_variables_have_types_descriptions_and_the_expected_defaults(variables):
    for name, body in variables.items():
        assert body.get("description"), f"variable {name} has no description"
        assert body.get("type"), f"variable {name} has no type"
    expected_defaults = {
        "aws_region": "ap-northeast-2",
        "availability_zone_suffixes": ["a", "c"],
        "nodes_per_az": 2,
        "ami_id": None,
        "criu_page_server_port": 27000,
        "criu_lazy_pages_port": 27001,
        "inventory_pairs": 1,
        "create_efs": False,
        "create_s3_bucket": False,
        "create_ebs_volumes": False,
        "efs_mount_path": "/mnt/efs",
        "ssh_public_key_path": "~/.ssh/id_ed25519.pub",
    }
    for name, default in expected_defaults.items():
        assert variables[name].get("default") == default, name
    for name in ("node_instance_type", "bastion_instance_type", "ubuntu_ami_name_pattern"):
        assert variables[name].get("default"), name
    # The one input without a default: who may SSH to the bastion.
    assert "default" not in variables["admin_cidr_blocks"]


def test_every_variable_is_declared_and_used(root, variables):
    text = json.dumps(root)
    referenced = set(re.findall(r"\bvar\.([A-Za-z_][A-Za-z0-9_]*)", text))
    assert referenced - set(variables) == set(), "referenced but not declared"
    assert set(variables) - referenced == set(), "declared but never used"


def test_ubuntu_is_the_default_image(root):
    ubuntu = typed(root, "data", "aws_ami")["ubuntu"]
    assert ubuntu["owners"] == ["099720109477"]  # Canonical
    assert ubuntu["count"] == "${var.ami_id == null ? 1 : 0}"
    name_filter = next(f for f in ubuntu["filter"] if f["name"] == "name")
    assert name_filter["values"] == ["${var.ubuntu_ami_name_pattern}"]
    locals_ = {k: v for block in root["locals"] for k, v in block.items()}
    assert "data.aws_ami.ubuntu[0].id" in locals_["ami_id"]
    assert "var.ami_id" in locals_["ami_id"]


def test_nodes_and_bastion_use_the_variables(root):
    instances = typed(root, "resource", "aws_instance")
    node, bastion = instances["node"], instances["bastion"]
    assert node["for_each"] == "${local.nodes}"
    assert node["instance_type"] == "${var.node_instance_type}"
    assert bastion["instance_type"] == "${var.bastion_instance_type}"
    for instance in (node, bastion):
        assert instance["ami"] == "${local.ami_id}"
        assert instance["iam_instance_profile"] == "${aws_iam_instance_profile.experiments.name}"
        assert instance["key_name"] == "${aws_key_pair.lab.key_name}"
    assert node["vpc_security_group_ids"] == ["${aws_security_group.nodes.id}"]
    assert bastion["vpc_security_group_ids"] == ["${aws_security_group.bastion.id}"]
    # Nodes in both AZs: one subnet per entry of availability_zone_suffixes.
    locals_ = {k: v for block in root["locals"] for k, v in block.items()}
    assert "var.availability_zone_suffixes" in locals_["azs"]
    assert "var.nodes_per_az" in locals_["nodes"]
    assert typed(root, "resource", "aws_subnet")["az"]["for_each"] == "${local.azs}"


def test_ingress_is_ssh_and_the_criu_ports_only(root, variables):
    security_groups = typed(root, "resource", "aws_security_group")
    for name, group in security_groups.items():
        # Rules are separate resources, so this test sees every one of them.
        assert "ingress" not in group and "egress" not in group, name
    assert not typed(root, "resource", "aws_security_group_rule")

    rules = typed(root, "resource", "aws_vpc_security_group_ingress_rule")
    ports = {}
    for name, rule in rules.items():
        from_port = resolve_port(rule["from_port"], variables)
        assert from_port == resolve_port(rule["to_port"], variables), f"{name} opens a range"
        assert rule["ip_protocol"] == "tcp", name
        ports[name] = from_port
    assert set(ports.values()) == {22, 27000, 27001, 2049}

    from_addresses = {
        name for name, rule in rules.items() if "cidr_ipv4" in rule or "cidr_ipv6" in rule
    }
    # From outside the VPC: SSH to the bastion, from admin_cidr_blocks, and nothing else.
    assert from_addresses == {"bastion_ssh"}
    bastion_ssh = rules["bastion_ssh"]
    assert ports["bastion_ssh"] == 22
    assert bastion_ssh["security_group_id"] == "${aws_security_group.bastion.id}"
    assert bastion_ssh["for_each"] == "${toset(var.admin_cidr_blocks)}"
    assert bastion_ssh["cidr_ipv4"] == "${each.value}"
    assert "0.0.0.0/0" not in json.dumps(rules)

    nodes_sg, bastion_sg = "${aws_security_group.nodes.id}", "${aws_security_group.bastion.id}"
    for name, rule in rules.items():
        if name == "bastion_ssh":
            continue
        source = rule["referenced_security_group_id"]
        if ports[name] in (27000, 27001):
            # The CRIU page server and lazy pages: node to node only.
            assert rule["security_group_id"] == nodes_sg and source == nodes_sg, name
        elif ports[name] == 22:
            assert rule["security_group_id"] == nodes_sg and source in (nodes_sg, bastion_sg), name
        else:  # NFS to the EFS mount targets, from the nodes
            assert rule["security_group_id"] == "${aws_security_group.efs[0].id}", name
            assert source == nodes_sg, name
    page_server = {ports[n] for n, r in rules.items() if "criu_page_server_port" in json.dumps(r)}
    lazy_pages = {ports[n] for n, r in rules.items() if "criu_lazy_pages_port" in json.dumps(r)}
    assert page_server == {27000} and lazy_pages == {27001}


def test_instance_profile_allows_the_s3_and_ebs_backends(root):
    policy = typed(root, "data", "aws_iam_policy_document")["experiments"]
    text = json.dumps(policy)
    for action in ("ec2:AttachVolume", "ec2:DetachVolume", "ec2:DescribeVolumes"):
        assert action in text
    for action in ("s3:PutObject", "s3:GetObject", "s3:ListBucket", "s3:DeleteObject"):
        assert action in text
    role_policy = typed(root, "resource", "aws_iam_role_policy")["experiments"]
    assert role_policy["policy"] == "${data.aws_iam_policy_document.experiments.json}"
    profile = typed(root, "resource", "aws_iam_instance_profile")["experiments"]
    assert profile["role"] == "${aws_iam_role.experiments.name}"


def test_optional_storage(root):
    efs = typed(root, "resource", "aws_efs_file_system")["checkpoints"]
    assert efs["count"] == "${var.create_efs ? 1 : 0}"
    mount_targets = typed(root, "resource", "aws_efs_mount_target")["az"]
    # One mount target per AZ subnet, so both AZs reach the file system.
    assert "aws_subnet.az" in mount_targets["for_each"]
    assert "var.create_efs" in mount_targets["for_each"]
    bucket = typed(root, "resource", "aws_s3_bucket")["checkpoints"]
    assert bucket["count"] == "${var.create_s3_bucket ? 1 : 0}"
    volumes = typed(root, "resource", "aws_ebs_volume")["checkpoint"]
    assert "var.create_ebs_volumes" in volumes["for_each"]
    assert "local.same_az_source_names" in volumes["for_each"]


def test_the_inventory_module_is_called_with_every_input(root, module):
    call = named(root, "module")["inventory"]
    assert call["source"] == "./modules/inventory"
    declared = named(module, "variable")
    required = {name for name, body in declared.items() if "default" not in body}
    given = set(call) - {"source"}
    assert required <= given, f"missing inputs: {required - given}"
    assert given <= set(declared), f"unknown inputs: {given - set(declared)}"
    assert given == set(declared), "every input is wired from the AWS resources"
    assert "aws_instance.node" in call["first_az_nodes"]
    assert "aws_instance.node" in call["second_az_nodes"]
    assert call["pairs"] == "${var.inventory_pairs}"
    assert "aws_efs_file_system.checkpoints" in call["efs_id"]
    assert call["s3_bucket"] == "${local.s3_bucket}"
    assert "aws_ebs_volume.checkpoint" in call["ebs_volume_ids"]


def test_local_file_writes_both_inventories(root, module):
    outputs = named(module, "output")
    files = typed(root, "resource", "local_file")
    written = {}
    for body in files.values():
        match = re.fullmatch(r"\$\{module\.inventory\.(\w+)\}", body["content"])
        assert match, body["content"]
        assert match.group(1) in outputs
        written[match.group(1)] = body["filename"]
    assert written["same_az_hosts_yml"].endswith("/aws_same_az/hosts.yml")
    assert written["cross_az_hosts_yml"].endswith("/aws_cross_az/hosts.yml")


def test_the_inventory_module_is_provider_free(module):
    for block_type in ("resource", "data", "provider", "module"):
        assert block_type not in module, f"modules/inventory has a {block_type} block"
    for settings in module.get("terraform", []):
        assert "required_providers" not in settings
    template = (INVENTORY_MODULE / "hosts.yml.tftpl").read_text(encoding="utf-8")
    assert "templatefile(" in json.dumps(module["locals"])
    for name in ("ansible_host", "migration_address", "instance_id", "availability_zone"):
        assert f"{name}:" in template


def test_outputs(root):
    outputs = named(root, "output")
    for name in (
        "bastion_public_ip",
        "bastion_ssh",
        "nodes",
        "same_az_pairs",
        "cross_az_pairs",
        "inventory_files",
        "efs_id",
        "s3_bucket",
        "ebs_volume_ids",
    ):
        assert name in outputs, name
        assert outputs[name].get("description"), name
    assert outputs["inventory_files"]["value"] == [
        "${local_file.same_az_inventory.filename}",
        "${local_file.cross_az_inventory.filename}",
    ]
