variable "first_az_nodes" {
  description = "Workload nodes in the first AZ (\"AZ a\"), in index order: sources of every pair, and the destinations of same-AZ pairs."
  type = list(object({
    name              = string
    private_ip        = string
    instance_id       = string
    availability_zone = string
  }))

  validation {
    condition     = alltrue([for node in var.first_az_nodes : can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]*$", node.name)) && node.private_ip != ""])
    error_message = "Every node needs a name made of letters, digits, '_', '.', '-' and a non-empty private_ip."
  }
}

variable "second_az_nodes" {
  description = "Workload nodes in the second AZ (\"AZ c\"), in index order: the destinations of cross-AZ pairs."
  type = list(object({
    name              = string
    private_ip        = string
    instance_id       = string
    availability_zone = string
  }))

  validation {
    condition     = alltrue([for node in var.second_az_nodes : can(regex("^[A-Za-z0-9][A-Za-z0-9_.-]*$", node.name)) && node.private_ip != ""])
    error_message = "Every node needs a name made of letters, digits, '_', '.', '-' and a non-empty private_ip."
  }
}

variable "pairs" {
  description = "Source/destination pairs per inventory (several pairs migrate in parallel, each source naming its peer in migration_peer)."
  type        = number
  default     = 1

  validation {
    condition     = var.pairs >= 1 && floor(var.pairs) == var.pairs
    error_message = "pairs must be a whole number >= 1."
  }
}

variable "aws_region" {
  description = "Region of the nodes (host variable aws_region, used by the S3 and EBS backends)."
  type        = string
}

variable "efs_id" {
  description = "EFS file system id shared by all nodes, or null when there is none."
  type        = string
  default     = null
}

variable "efs_mount_path" {
  description = "Where the EFS file system is mounted on every node."
  type        = string
  default     = "/mnt/efs"
}

variable "s3_bucket" {
  description = "S3 bucket for the s3 transfer backend, or null when there is none."
  type        = string
  default     = null
}

variable "ebs_volume_ids" {
  description = "EBS volume id per same-AZ source node name (the ebs backend moves it to the destination). An EBS volume cannot leave its AZ, so cross-AZ inventories never get one."
  type        = map(string)
  default     = {}
}
