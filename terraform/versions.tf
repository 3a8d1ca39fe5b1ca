terraform {
  # Cross-variable validation (nodes_per_az vs inventory_pairs) needs 1.9.
  required_version = ">= 1.9"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40, < 7.0"
    }
    local = {
      source  = "hashicorp/local"
      version = "~> 2.5"
    }
  }
}

provider "aws" {
  region = var.aws_region

  default_tags {
    # Project is also what the instance profile's EBS attach/detach permission is scoped to.
    tags = merge(var.tags, { Project = var.project_name, ManagedBy = "terraform" })
  }
}
