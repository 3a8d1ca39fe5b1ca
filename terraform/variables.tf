# Inputs of the experiment environment. Only admin_cidr_blocks has no default.

variable "aws_region" {
  description = "Region for everything. The default, Seoul, has the seed's AZs a and c."
  type        = string
  default     = "ap-northeast-2"
}

variable "availability_zone_suffixes" {
  description = "The two AZs, as suffixes of aws_region: same-AZ pairs live in the first, cross-AZ pairs go from the first to the second."
  type        = list(string)
  default     = ["a", "c"]

  validation {
    condition     = length(var.availability_zone_suffixes) == 2 && length(distinct(var.availability_zone_suffixes)) == 2
    error_message = "availability_zone_suffixes needs exactly two different AZ suffixes, e.g. [\"a\", \"c\"]."
  }
}

variable "project_name" {
  description = "Prefix of resource names and the Project tag."
  type        = string
  default     = "criu-migration"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,30}$", var.project_name))
    error_message = "project_name: lower-case letters, digits and '-', 2-31 characters, starting with a letter."
  }
}

variable "vpc_cidr" {
  description = "VPC address range; each AZ gets a /24 of it (192.168.10.0/24 and 192.168.20.0/24 by default, as in the seed's servers.yaml)."
  type        = string
  default     = "192.168.0.0/16"
}

variable "admin_cidr_blocks" {
  description = "Addresses allowed to SSH to the bastion, e.g. [\"203.0.113.7/32\"]. The only ingress from outside the VPC."
  type        = list(string)

  validation {
    condition     = length(var.admin_cidr_blocks) > 0 && alltrue([for cidr in var.admin_cidr_blocks : can(cidrhost(cidr, 0))])
    error_message = "admin_cidr_blocks needs at least one CIDR block, e.g. [\"203.0.113.7/32\"]."
  }
}

variable "ssh_public_key_path" {
  description = "Public half of the SSH key installed for user ubuntu on the bastion and every node. Its private half must be ~/.ssh/id_ed25519 on the bastion (group_vars/aws.yml)."
  type        = string
  default     = "~/.ssh/id_ed25519.pub"
}

variable "ami_id" {
  description = "AMI for the bastion and the nodes; null picks the newest Ubuntu image matching ubuntu_ami_name_pattern (Canonical's account)."
  type        = string
  default     = null
}

variable "ubuntu_ami_name_pattern" {
  description = "Image name filter used when ami_id is null."
  type        = string
  default     = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
}

variable "nodes_per_az" {
  description = "Workload nodes in each of the two AZs (a same-AZ pair takes two nodes of the first AZ)."
  type        = number
  default     = 2

  validation {
    condition     = var.nodes_per_az >= 2 * var.inventory_pairs
    error_message = "nodes_per_az must be at least 2 x inventory_pairs: a same-AZ pair takes two nodes of the first AZ."
  }
}

variable "node_instance_type" {
  description = "Instance type of the workload nodes. 16 GiB fits the seed's largest default (memory workload up to 8192 MB) with room for restore."
  type        = string
  default     = "m5.xlarge"
}

variable "node_root_volume_gb" {
  description = "Root volume of each node in GiB (checkpoint images are written here unless a backend says otherwise)."
  type        = number
  default     = 40
}

variable "node_market_type" {
  description = "\"on-demand\" or \"spot\" workload nodes (spot: one-time requests, terminated on interruption)."
  type        = string
  default     = "on-demand"

  validation {
    condition     = contains(["on-demand", "spot"], var.node_market_type)
    error_message = "node_market_type must be \"on-demand\" or \"spot\"."
  }
}

variable "bastion_instance_type" {
  description = "Instance type of the bastion (the control node running Ansible)."
  type        = string
  default     = "t3.medium"
}

variable "criu_page_server_port" {
  description = "TCP port of `criu page-server` on the destination; keep it equal to the suite's page-server port (27000)."
  type        = number
  default     = 27000
}

variable "criu_lazy_pages_port" {
  description = "TCP port of the lazy-pages daemon (network post-copy); keep it equal to the suite's lazy-pages port (27001)."
  type        = number
  default     = 27001
}

variable "inventory_pairs" {
  description = "Source/destination pairs in each generated inventory (several pairs migrate in parallel)."
  type        = number
  default     = 1

  validation {
    condition     = var.inventory_pairs >= 1 && floor(var.inventory_pairs) == var.inventory_pairs
    error_message = "inventory_pairs must be a whole number >= 1."
  }
}

variable "inventory_dir" {
  description = "Folder that receives aws_same_az/hosts.yml and aws_cross_az/hosts.yml; null means the repository's inventories/."
  type        = string
  default     = null
}

variable "create_efs" {
  description = "Create an EFS file system with a mount target in both AZs, mounted on every node at efs_mount_path (transfer=efs)."
  type        = bool
  default     = false
}

variable "efs_mount_path" {
  description = "Where the nodes mount the EFS file system."
  type        = string
  default     = "/mnt/efs"
}

variable "create_s3_bucket" {
  description = "Create an S3 bucket for checkpoints (transfer=s3)."
  type        = bool
  default     = false
}

variable "existing_s3_bucket" {
  description = "Name of an existing bucket to use for transfer=s3 instead of creating one (the instance profile is granted access to it)."
  type        = string
  default     = null
}

variable "s3_force_destroy" {
  description = "Let `terraform destroy` delete the created bucket even when checkpoints are still in it."
  type        = bool
  default     = true
}

variable "create_ebs_volumes" {
  description = "Create one EBS volume per same-AZ pair in the first AZ, left detached; transfer=ebs attaches it to the source and moves it to the destination. EBS volumes cannot leave their AZ, so cross-AZ inventories get none."
  type        = bool
  default     = false
}

variable "ebs_volume_gb" {
  description = "Size of each EBS checkpoint volume in GiB."
  type        = number
  default     = 20
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}
