# One instance profile for the bastion and the nodes: the S3 backend reads and writes the
# checkpoint bucket, the EBS backend detaches the volume from the source and attaches it
# to the destination (only on instances and volumes tagged with this Project).

data "aws_iam_policy_document" "assume_ec2" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

data "aws_iam_policy_document" "experiments" {
  statement {
    sid = "DescribeForEbsTransfer"
    actions = [
      "ec2:DescribeInstances",
      "ec2:DescribeVolumes",
      "ec2:DescribeVolumeStatus",
    ]
    resources = ["*"]
  }

  statement {
    sid       = "MoveProjectVolumes"
    actions   = ["ec2:AttachVolume", "ec2:DetachVolume"]
    resources = ["arn:aws:ec2:${var.aws_region}:*:volume/*", "arn:aws:ec2:${var.aws_region}:*:instance/*"]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/Project"
      values   = [var.project_name]
    }
  }

  dynamic "statement" {
    for_each = var.create_s3_bucket || var.existing_s3_bucket != null ? [local.s3_bucket] : []

    content {
      sid       = "ListCheckpointBucket"
      actions   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
      resources = ["arn:aws:s3:::${statement.value}"]
    }
  }

  dynamic "statement" {
    for_each = var.create_s3_bucket || var.existing_s3_bucket != null ? [local.s3_bucket] : []

    content {
      sid = "ReadWriteCheckpoints"
      actions = [
        "s3:GetObject",
        "s3:PutObject",
        "s3:DeleteObject",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
      ]
      resources = ["arn:aws:s3:::${statement.value}/*"]
    }
  }
}

resource "aws_iam_role" "experiments" {
  name               = "${var.project_name}-experiments"
  assume_role_policy = data.aws_iam_policy_document.assume_ec2.json
}

resource "aws_iam_role_policy" "experiments" {
  name   = "${var.project_name}-transfer-backends"
  role   = aws_iam_role.experiments.id
  policy = data.aws_iam_policy_document.experiments.json
}

resource "aws_iam_instance_profile" "experiments" {
  name = "${var.project_name}-experiments"
  role = aws_iam_role.experiments.name
}
