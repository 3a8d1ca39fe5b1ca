locals {
  # Same AZ: nodes 0→1, 2→3, ... of the first AZ. Cross AZ: node i of the first AZ → node i of the second.
  same_az_pair_count  = min(var.pairs, floor(length(var.first_az_nodes) / 2))
  cross_az_pair_count = min(var.pairs, length(var.first_az_nodes), length(var.second_az_nodes))

  same_az_pairs = [
    for i in range(local.same_az_pair_count) : {
      source        = var.first_az_nodes[2 * i]
      destination   = var.first_az_nodes[2 * i + 1]
      ebs_volume_id = lookup(var.ebs_volume_ids, var.first_az_nodes[2 * i].name, null)
    }
  ]
  cross_az_pairs = [
    for i in range(local.cross_az_pair_count) : {
      source        = var.first_az_nodes[i]
      destination   = var.second_az_nodes[i]
      ebs_volume_id = null
    }
  ]

  first_az  = try(var.first_az_nodes[0].availability_zone, "the first AZ")
  second_az = try(var.second_az_nodes[0].availability_zone, "the second AZ")

  # Values every host carries (null ones are left out of the file).
  shared_host_vars = {
    aws_region     = var.aws_region
    efs_id         = var.efs_id
    efs_mount_path = var.efs_id == null ? null : var.efs_mount_path
    s3_bucket      = var.s3_bucket
  }

  rendered = {
    for scope, pairs in { same_az = local.same_az_pairs, cross_az = local.cross_az_pairs } : scope => templatefile("${path.module}/hosts.yml.tftpl", {
      scope = scope
      title = scope == "same_az" ? "same-AZ migration (source and destination in ${local.first_az})" : "cross-AZ migration (${local.first_az} → ${local.second_az})"
      pairs = pairs
      hosts = flatten([
        for pair in pairs : [
          merge(pair.source, { migration_peer = pair.destination.name, ebs_volume_id = pair.ebs_volume_id }),
          merge(pair.destination, { migration_peer = null, ebs_volume_id = null }),
        ]
      ])
      shared_host_vars = { for name, value in local.shared_host_vars : name => value if value != null }
    })
  }
}
