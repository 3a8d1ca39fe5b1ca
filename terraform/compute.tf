resource "aws_key_pair" "lab" {
  key_name   = "${var.project_name}-key"
  public_key = file(pathexpand(var.ssh_public_key_path))
}

locals {
  # Amazon Time Sync Service (link-local, the same in every AZ): downtime figures compare
  # the clocks of the source, the destination and the bastion.
  chrony_sources = "# Written by Terraform (cloud-init): Amazon Time Sync Service.\nserver 169.254.169.123 prefer iburst minpoll 4 maxpoll 4\n"

  efs_dns_name = var.create_efs ? "${aws_efs_file_system.checkpoints[0].id}.efs.${var.aws_region}.amazonaws.com" : ""

  # The seed's bastion exported the nodes' addresses per AZ (AZ_A_INSTANCES_IP="ip ip ...");
  # kept so its recipes (SOURCE_NODE_IP=$(echo $AZ_A_INSTANCES_IP | cut -d' ' -f1)) still work.
  bastion_profile = join("", [
    for suffix in var.availability_zone_suffixes :
    "export AZ_${upper(suffix)}_INSTANCES_IP=\"${join(" ", [for name, node in local.nodes : aws_instance.node[name].private_ip if node.az_suffix == suffix])}\"\n"
  ])
}

resource "aws_instance" "node" {
  for_each = local.nodes

  ami                    = local.ami_id
  instance_type          = var.node_instance_type
  subnet_id              = aws_subnet.az[each.value.az_suffix].id
  vpc_security_group_ids = [aws_security_group.nodes.id]
  key_name               = aws_key_pair.lab.key_name
  iam_instance_profile   = aws_iam_instance_profile.experiments.name

  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    packages       = concat(["chrony", "rsync", "python3-venv"], var.create_efs ? ["nfs-common"] : [])
    chrony_sources = local.chrony_sources
    profile_env    = ""
    efs_dns_name   = local.efs_dns_name
    efs_mount_path = var.efs_mount_path
  })

  root_block_device {
    volume_type = "gp3"
    volume_size = var.node_root_volume_gb
    encrypted   = true
  }

  metadata_options {
    http_tokens = "required" # IMDSv2 (the spot-notice trigger reads instance metadata)
  }

  dynamic "instance_market_options" {
    for_each = var.node_market_type == "spot" ? [1] : []

    content {
      market_type = "spot"

      spot_options {
        spot_instance_type             = "one-time"
        instance_interruption_behavior = "terminate"
      }
    }
  }

  tags = { Name = each.key, Role = "workload-node" }

  # cloud-init mounts EFS at boot, so the mount targets must exist first.
  depends_on = [aws_efs_mount_target.az]

  lifecycle {
    # A newer Ubuntu image or an edited cloud-init must not replace nodes in the middle of a study.
    ignore_changes = [ami, user_data]
  }
}

resource "aws_instance" "bastion" {
  ami                    = local.ami_id
  instance_type          = var.bastion_instance_type
  subnet_id              = aws_subnet.az[local.first_az_suffix].id
  vpc_security_group_ids = [aws_security_group.bastion.id]
  key_name               = aws_key_pair.lab.key_name
  iam_instance_profile   = aws_iam_instance_profile.experiments.name

  user_data = templatefile("${path.module}/templates/cloud-init.yaml.tftpl", {
    packages       = ["chrony", "rsync", "git", "make", "python3-venv", "python3-pip"]
    chrony_sources = local.chrony_sources
    profile_env    = local.bastion_profile
    efs_dns_name   = ""
    efs_mount_path = var.efs_mount_path
  })

  root_block_device {
    volume_type = "gp3"
    volume_size = 30
    encrypted   = true
  }

  metadata_options {
    http_tokens = "required"
  }

  tags = { Name = "${var.project_name}-bastion", Role = "bastion" }

  lifecycle {
    ignore_changes = [ami, user_data]
  }
}
