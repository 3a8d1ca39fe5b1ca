output "bastion_public_ip" {
  description = "Public address of the bastion (the control node)."
  value       = aws_instance.bastion.public_ip
}

output "bastion_ssh" {
  description = "How to log in to the bastion."
  value       = "ssh ubuntu@${aws_instance.bastion.public_ip}"
}

output "nodes" {
  description = "Workload nodes by name: private address, AZ, instance id."
  value = {
    for name, node in aws_instance.node : name => {
      private_ip        = node.private_ip
      availability_zone = node.availability_zone
      instance_id       = node.id
    }
  }
}

output "same_az_pairs" {
  description = "Pairs in inventories/aws_same_az (source → destination)."
  value       = module.inventory.same_az_pairs
}

output "cross_az_pairs" {
  description = "Pairs in inventories/aws_cross_az (source → destination)."
  value       = module.inventory.cross_az_pairs
}

output "inventory_files" {
  description = "The generated Ansible inventories."
  value       = [local_file.same_az_inventory.filename, local_file.cross_az_inventory.filename]
}

output "efs_id" {
  description = "EFS file system for transfer=efs (null when create_efs is false)."
  value       = var.create_efs ? aws_efs_file_system.checkpoints[0].id : null
}

output "s3_bucket" {
  description = "Bucket for transfer=s3 (null when there is none)."
  value       = local.s3_bucket
}

output "ebs_volume_ids" {
  description = "EBS checkpoint volume per same-AZ source node (transfer=ebs)."
  value       = { for name, volume in aws_ebs_volume.checkpoint : name => volume.id }
}
