# An AWS environment for the CRIU migration experiments: a VPC with one subnet in each of
# two AZs, a bastion (the control node that runs Ansible), nodes_per_az workload nodes in
# each AZ, optional EFS / S3 / EBS for the transfer backends, and the two Ansible
# inventories (inventory.tf). docs/cloud.md walks through it.

data "aws_ami" "ubuntu" {
  count       = var.ami_id == null ? 1 : 0
  most_recent = true
  owners      = ["099720109477"] # Canonical

  filter {
    name   = "name"
    values = [var.ubuntu_ami_name_pattern]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

locals {
  ami_id = var.ami_id != null ? var.ami_id : data.aws_ami.ubuntu[0].id

  first_az_suffix  = var.availability_zone_suffixes[0]
  second_az_suffix = var.availability_zone_suffixes[1]

  # One subnet per AZ: 192.168.10.0/24 for the first, 192.168.20.0/24 for the second (defaults).
  azs = {
    for position, suffix in var.availability_zone_suffixes : suffix => {
      name        = "${var.aws_region}${suffix}"
      subnet_cidr = cidrsubnet(var.vpc_cidr, 8, 10 * (position + 1))
    }
  }

  # Workload nodes, named as in the seed's servers.yaml: az-a-node-0, az-a-node-1, az-c-node-0, ...
  nodes = merge([
    for suffix in var.availability_zone_suffixes : {
      for index in range(var.nodes_per_az) : "az-${suffix}-node-${index}" => {
        az_suffix = suffix
        index     = index
      }
    }
  ]...)
  first_az_node_names  = [for index in range(var.nodes_per_az) : "az-${local.first_az_suffix}-node-${index}"]
  second_az_node_names = [for index in range(var.nodes_per_az) : "az-${local.second_az_suffix}-node-${index}"]

  # Sources of the same-AZ pairs (nodes 0, 2, 4, ... of the first AZ): where EBS volumes start.
  same_az_source_names = [for pair in range(var.inventory_pairs) : local.first_az_node_names[2 * pair]]

  s3_bucket = var.create_s3_bucket ? aws_s3_bucket.checkpoints[0].bucket : var.existing_s3_bucket
}
