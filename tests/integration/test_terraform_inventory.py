"""The Terraform-generated inventories, rendered by the real Terraform CLI.

terraform/modules/inventory is provider-free, so `terraform init -backend=false` and
`plan` evaluate its templates here without downloading anything. A tiny root
module (tests/fixtures/terraform/inventory_root) feeds it fixture host lists; each
rendered hosts.yml is then read back with `ansible-inventory --list`. Everything is
written under pytest's tmp_path: nothing lands in the repository.

Without the terraform CLI these tests skip; under CI=true that skip fails the run
(tests/conftest.py), so CI never counts them as run when they were not.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import run_ansible_inventory

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "terraform"
MODULE = REPO / "terraform" / "modules" / "inventory"
MODULE_SOURCE_IN_FIXTURE = "../../../../terraform/modules/inventory"
TERRAFORM = shutil.which("terraform")

pytestmark = pytest.mark.skipif(
    TERRAFORM is None, reason="the terraform CLI is not installed (docs/cloud.md: Terraform >= 1.9)"
)

NODE_FIELDS = ("name", "private_ip", "instance_id", "availability_zone")


def fixture_nodes(suffix: str, count: int) -> list[dict[str, str]]:
    subnet = {"a": 10, "c": 20}[suffix]
    return [
        {
            "name": f"az-{suffix}-node-{index}",
            "private_ip": f"192.168.{subnet}.{100 + index}",
            "instance_id": f"i-0{suffix}{index:016x}",
            "availability_zone": f"ap-northeast-2{suffix}",
        }
        for index in range(count)
    ]


def terraform_env(tmp: Path) -> dict[str, str]:
    cli_config = tmp / "terraformrc"
    cli_config.write_text("", encoding="utf-8")
    return {
        **os.environ,
        "TF_DATA_DIR": str(tmp / "tf-data"),
        "TF_CLI_CONFIG_FILE": str(cli_config),
        "TF_IN_AUTOMATION": "1",
        "TF_INPUT": "0",
        "CHECKPOINT_DISABLE": "1",
    }


def terraform(workdir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [TERRAFORM, f"-chdir={workdir}", *args, "-no-color"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class FixtureRoot:
    """A copy of a fixture root module in a temp dir, initialised, planned on demand."""

    def __init__(self, tmp: Path, fixture: str):
        self.tmp = tmp
        self.workdir = tmp / fixture
        shutil.copytree(FIXTURES / fixture, self.workdir)
        main = self.workdir / "main.tf"
        # Module sources must be relative paths: point the copy back at the real module.
        relative = os.path.relpath(MODULE, self.workdir)
        main.write_text(
            main.read_text(encoding="utf-8").replace(MODULE_SOURCE_IN_FIXTURE, relative),
            encoding="utf-8",
        )
        self.env = terraform_env(tmp)
        init = terraform(self.workdir, self.env, "init", "-backend=false", "-input=false")
        assert init.returncode == 0, init.stderr + init.stdout

    def plan(self, variables: dict) -> subprocess.CompletedProcess:
        var_file = self.tmp / "fixture.tfvars.json"
        var_file.write_text(json.dumps(variables), encoding="utf-8")
        return terraform(
            self.workdir,
            self.env,
            "plan",
            "-input=false",
            f"-var-file={var_file}",
            f"-out={self.tmp / 'fixture.tfplan'}",
        )

    def outputs(self, variables: dict) -> dict:
        plan = self.plan(variables)
        assert plan.returncode == 0, plan.stderr + plan.stdout
        show = terraform(self.workdir, self.env, "show", "-json", str(self.tmp / "fixture.tfplan"))
        assert show.returncode == 0, show.stderr
        planned = json.loads(show.stdout)["planned_values"]["outputs"]
        return {name: output["value"] for name, output in planned.items()}


@pytest.fixture(scope="module")
def inventory_root(tmp_path_factory) -> FixtureRoot:
    return FixtureRoot(tmp_path_factory.mktemp("tf-inventory"), "inventory_root")


@pytest.fixture(scope="module")
def fixture_hosts() -> dict:
    with (FIXTURES / "inventory_root" / "nodes.tfvars.json").open(encoding="utf-8") as stream:
        return json.load(stream)


def ansible_inventory_list(inventory_text: str, tmp: Path) -> dict:
    path = tmp / "hosts.yml"
    path.write_text(inventory_text, encoding="utf-8")
    env = {**os.environ, "ANSIBLE_HOME": str(tmp / "ansible-home")}
    result = run_ansible_inventory(path, env, cwd=tmp)
    assert result.returncode == 0, result.stderr
    assert "Unable to parse" not in result.stderr, result.stderr
    return json.loads(result.stdout)


def group_hosts(listing: dict, group: str) -> list[str]:
    return listing.get(group, {}).get("hosts", [])


def test_terraform_fmt_check():
    result = subprocess.run(
        [
            TERRAFORM,
            "fmt",
            "-check",
            "-recursive",
            "-diff",
            "terraform",
            "tests/fixtures/terraform",
        ],
        cwd=REPO,
        env={**os.environ, "CHECKPOINT_DISABLE": "1", "TF_CLI_CONFIG_FILE": os.devnull},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"terraform fmt would change:\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize(
    ("output", "scope", "source", "destination"),
    [
        ("same_az_hosts_yml", "same_az", "az-a-node-0", "az-a-node-1"),
        ("cross_az_hosts_yml", "cross_az", "az-a-node-0", "az-c-node-0"),
    ],
)
def test_rendered_inventory_has_one_pair_with_its_host_vars(
    inventory_root, fixture_hosts, tmp_path, output, scope, source, destination
):
    rendered = inventory_root.outputs(fixture_hosts)[output]
    assert rendered.startswith("# Ansible inventory:"), "the file says it is generated"
    listing = ansible_inventory_list(rendered, tmp_path)

    assert group_hosts(listing, "source") == [source]
    assert group_hosts(listing, "destination") == [destination]
    assert sorted(group_hosts(listing, "aws")) == sorted([source, destination])

    nodes = {
        n["name"]: n for n in fixture_hosts["first_az_nodes"] + fixture_hosts["second_az_nodes"]
    }
    hostvars = listing["_meta"]["hostvars"]
    for host in (source, destination):
        assert hostvars[host]["ansible_host"] == nodes[host]["private_ip"]
        assert hostvars[host]["migration_address"] == nodes[host]["private_ip"]
        assert hostvars[host]["instance_id"] == nodes[host]["instance_id"]
        assert hostvars[host]["availability_zone"] == nodes[host]["availability_zone"]
        assert hostvars[host]["aws_region"] == "ap-northeast-2"
        assert hostvars[host]["migration_scope"] == scope
        assert hostvars[host]["efs_id"] == fixture_hosts["efs_id"]
        assert hostvars[host]["efs_mount_path"] == "/mnt/efs"
        assert hostvars[host]["s3_bucket"] == fixture_hosts["s3_bucket"]
    assert hostvars[source]["migration_peer"] == destination
    assert "migration_peer" not in hostvars[destination]

    same_az = hostvars[source]["availability_zone"] == hostvars[destination]["availability_zone"]
    assert same_az is (scope == "same_az")
    # An EBS volume cannot leave its AZ: only the same-AZ source carries one.
    if scope == "same_az":
        assert hostvars[source]["ebs_volume_id"] == fixture_hosts["ebs_volume_ids"][source]
    else:
        assert "ebs_volume_id" not in hostvars[source]
    assert "ebs_volume_id" not in hostvars[destination]


def test_without_storage_the_backend_vars_are_absent(inventory_root, tmp_path):
    outputs = inventory_root.outputs(
        {"first_az_nodes": fixture_nodes("a", 2), "second_az_nodes": fixture_nodes("c", 1)}
    )
    for output in ("same_az_hosts_yml", "cross_az_hosts_yml"):
        listing = ansible_inventory_list(outputs[output], tmp_path)
        for hostvars in listing["_meta"]["hostvars"].values():
            for name in ("efs_id", "efs_mount_path", "s3_bucket", "ebs_volume_id"):
                assert name not in hostvars, (output, name)


def test_several_pairs_name_their_peers(inventory_root, tmp_path):
    outputs = inventory_root.outputs(
        {
            "first_az_nodes": fixture_nodes("a", 4),
            "second_az_nodes": fixture_nodes("c", 4),
            "pairs": 2,
        }
    )
    expected = {
        "same_az_hosts_yml": {"az-a-node-0": "az-a-node-1", "az-a-node-2": "az-a-node-3"},
        "cross_az_hosts_yml": {"az-a-node-0": "az-c-node-0", "az-a-node-1": "az-c-node-1"},
    }
    for output, peers in expected.items():
        listing = ansible_inventory_list(outputs[output], tmp_path)
        hostvars = listing["_meta"]["hostvars"]
        assert sorted(group_hosts(listing, "source")) == sorted(peers)
        assert sorted(group_hosts(listing, "destination")) == sorted(peers.values())
        assert {host: hostvars[host]["migration_peer"] for host in peers} == peers
    assert outputs["cross_az_pairs"] == [
        {"source": "az-a-node-0", "destination": "az-c-node-0"},
        {"source": "az-a-node-1", "destination": "az-c-node-1"},
    ]


def test_too_few_nodes_is_refused_with_a_clear_message(inventory_root):
    plan = inventory_root.plan(
        {
            "first_az_nodes": fixture_nodes("a", 2),
            "second_az_nodes": fixture_nodes("c", 2),
            "pairs": 2,
        }
    )
    assert plan.returncode != 0
    assert "same-AZ inventory with 2 pair(s) needs 4 nodes in the first AZ; got 2" in " ".join(
        plan.stderr.split()
    )


def test_cloud_init_template_is_valid_cloud_config(tmp_path_factory):
    root = FixtureRoot(tmp_path_factory.mktemp("tf-cloud-init"), "cloud_init_root")
    template = REPO / "terraform" / "templates" / "cloud-init.yaml.tftpl"
    outputs = root.outputs({"template_path": str(template)})

    node = outputs["node_with_efs"]
    assert node.startswith("#cloud-config\n")
    node_config = yaml.safe_load(node)
    assert "chrony" in node_config["packages"] and "nfs-common" in node_config["packages"]
    sources = {f["path"]: f["content"] for f in node_config["write_files"]}
    assert "169.254.169.123" in sources["/etc/chrony/sources.d/amazon-time-sync.sources"]
    commands = json.dumps(node_config["runcmd"])
    assert "fs-0123456789abcdef0.efs.ap-northeast-2.amazonaws.com:/ /mnt/efs nfs4" in commands

    bastion_config = yaml.safe_load(outputs["bastion"])
    profile = {f["path"]: f["content"] for f in bastion_config["write_files"]}
    assert (
        'AZ_A_INSTANCES_IP="192.168.10.100 192.168.10.101"'
        in profile["/etc/profile.d/criu-migration.sh"]
    )
    assert "mount" not in json.dumps(bastion_config["runcmd"])
