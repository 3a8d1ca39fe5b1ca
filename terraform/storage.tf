# Optional storage for the transfer backends: EFS (shared by both AZs), S3, and EBS
# volumes (one per same-AZ pair).

resource "aws_efs_file_system" "checkpoints" {
  count = var.create_efs ? 1 : 0

  creation_token  = "${var.project_name}-checkpoints"
  encrypted       = true
  throughput_mode = "elastic"

  tags = { Name = "${var.project_name}-checkpoints" }
}

resource "aws_efs_mount_target" "az" {
  # One mount target per AZ, so both same-AZ and cross-AZ pairs reach it locally.
  for_each = { for suffix, subnet in aws_subnet.az : suffix => subnet.id if var.create_efs }

  file_system_id  = aws_efs_file_system.checkpoints[0].id
  subnet_id       = each.value
  security_groups = [aws_security_group.efs[0].id]
}

resource "aws_s3_bucket" "checkpoints" {
  count = var.create_s3_bucket ? 1 : 0

  bucket_prefix = "${var.project_name}-ckpt-"
  force_destroy = var.s3_force_destroy

  tags = { Name = "${var.project_name}-checkpoints" }
}

resource "aws_s3_bucket_public_access_block" "checkpoints" {
  count = var.create_s3_bucket ? 1 : 0

  bucket                  = aws_s3_bucket.checkpoints[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_ebs_volume" "checkpoint" {
  # Left detached: transfer=ebs attaches it to the source, then moves it to the destination.
  for_each = var.create_ebs_volumes ? toset(local.same_az_source_names) : toset([])

  availability_zone = local.azs[local.first_az_suffix].name
  size              = var.ebs_volume_gb
  type              = "gp3"
  encrypted         = true

  tags = { Name = "${var.project_name}-checkpoints-${each.key}", SourceNode = each.key }
}
