# The Ansible inventories: rendered by the provider-free module (tested with the real
# Terraform CLI), written next to the suite's other inventories.

module "inventory" {
  source = "./modules/inventory"

  first_az_nodes = [
    for name in local.first_az_node_names : {
      name              = name
      private_ip        = aws_instance.node[name].private_ip
      instance_id       = aws_instance.node[name].id
      availability_zone = aws_instance.node[name].availability_zone
    }
  ]
  second_az_nodes = [
    for name in local.second_az_node_names : {
      name              = name
      private_ip        = aws_instance.node[name].private_ip
      instance_id       = aws_instance.node[name].id
      availability_zone = aws_instance.node[name].availability_zone
    }
  ]
  pairs          = var.inventory_pairs
  aws_region     = var.aws_region
  efs_id         = var.create_efs ? aws_efs_file_system.checkpoints[0].id : null
  efs_mount_path = var.efs_mount_path
  s3_bucket      = local.s3_bucket
  ebs_volume_ids = { for name, volume in aws_ebs_volume.checkpoint : name => volume.id }
}

locals {
  inventory_dir = var.inventory_dir != null ? var.inventory_dir : abspath("${path.root}/../inventories")
}

resource "local_file" "same_az_inventory" {
  filename             = "${local.inventory_dir}/aws_same_az/hosts.yml"
  content              = module.inventory.same_az_hosts_yml
  file_permission      = "0644"
  directory_permission = "0755"
}

resource "local_file" "cross_az_inventory" {
  filename             = "${local.inventory_dir}/aws_cross_az/hosts.yml"
  content              = module.inventory.cross_az_hosts_yml
  file_permission      = "0644"
  directory_permission = "0755"
}
