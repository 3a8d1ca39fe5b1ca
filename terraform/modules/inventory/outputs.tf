output "same_az_hosts_yml" {
  description = "inventories/aws_same_az/hosts.yml: pairs inside the first AZ."
  value       = local.rendered["same_az"]

  precondition {
    condition     = length(var.first_az_nodes) >= 2 * var.pairs
    error_message = "A same-AZ inventory with ${var.pairs} pair(s) needs ${2 * var.pairs} nodes in the first AZ; got ${length(var.first_az_nodes)}."
  }
}

output "cross_az_hosts_yml" {
  description = "inventories/aws_cross_az/hosts.yml: node i of the first AZ to node i of the second."
  value       = local.rendered["cross_az"]

  precondition {
    condition     = length(var.first_az_nodes) >= var.pairs && length(var.second_az_nodes) >= var.pairs
    error_message = "A cross-AZ inventory with ${var.pairs} pair(s) needs ${var.pairs} node(s) in each AZ; got ${length(var.first_az_nodes)} and ${length(var.second_az_nodes)}."
  }
}

output "same_az_pairs" {
  description = "Same-AZ pairs as source → destination host names."
  value       = [for pair in local.same_az_pairs : { source = pair.source.name, destination = pair.destination.name }]
}

output "cross_az_pairs" {
  description = "Cross-AZ pairs as source → destination host names."
  value       = [for pair in local.cross_az_pairs : { source = pair.source.name, destination = pair.destination.name }]
}
