# Ingress, all of it: SSH to the bastion from admin_cidr_blocks; SSH to the nodes from the
# bastion (Ansible) and from each other (transfer=rsync goes source → destination); the
# CRIU page server and lazy-pages ports only between nodes; NFS to EFS only from nodes.
# Egress is open (package mirrors, S3, the EC2 API).

resource "aws_security_group" "bastion" {
  name        = "${var.project_name}-bastion"
  description = "Bastion: SSH from the admin CIDR blocks"
  vpc_id      = aws_vpc.main.id
  tags        = { Name = "${var.project_name}-bastion" }
}

resource "aws_security_group" "nodes" {
  name        = "${var.project_name}-nodes"
  description = "Workload nodes: SSH from the bastion and the nodes, CRIU ports between nodes"
  vpc_id      = aws_vpc.main.id
  tags        = { Name = "${var.project_name}-nodes" }
}

resource "aws_vpc_security_group_ingress_rule" "bastion_ssh" {
  for_each = toset(var.admin_cidr_blocks)

  security_group_id = aws_security_group.bastion.id
  description       = "SSH from an admin address"
  ip_protocol       = "tcp"
  from_port         = 22
  to_port           = 22
  cidr_ipv4         = each.value
}

resource "aws_vpc_security_group_ingress_rule" "nodes_ssh_from_bastion" {
  security_group_id            = aws_security_group.nodes.id
  description                  = "SSH from the bastion (Ansible)"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  referenced_security_group_id = aws_security_group.bastion.id
}

resource "aws_vpc_security_group_ingress_rule" "nodes_ssh_between_nodes" {
  security_group_id            = aws_security_group.nodes.id
  description                  = "SSH between nodes (rsync transfer, source to destination)"
  ip_protocol                  = "tcp"
  from_port                    = 22
  to_port                      = 22
  referenced_security_group_id = aws_security_group.nodes.id
}

resource "aws_vpc_security_group_ingress_rule" "nodes_criu_page_server" {
  security_group_id            = aws_security_group.nodes.id
  description                  = "criu page-server between nodes"
  ip_protocol                  = "tcp"
  from_port                    = var.criu_page_server_port
  to_port                      = var.criu_page_server_port
  referenced_security_group_id = aws_security_group.nodes.id
}

resource "aws_vpc_security_group_ingress_rule" "nodes_criu_lazy_pages" {
  security_group_id            = aws_security_group.nodes.id
  description                  = "CRIU lazy-pages daemon between nodes (network post-copy)"
  ip_protocol                  = "tcp"
  from_port                    = var.criu_lazy_pages_port
  to_port                      = var.criu_lazy_pages_port
  referenced_security_group_id = aws_security_group.nodes.id
}

resource "aws_vpc_security_group_egress_rule" "bastion_all" {
  security_group_id = aws_security_group.bastion.id
  description       = "Outbound: nodes, package mirrors, AWS APIs"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_vpc_security_group_egress_rule" "nodes_all" {
  security_group_id = aws_security_group.nodes.id
  description       = "Outbound: other nodes, package mirrors, S3, EC2 API"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
}

resource "aws_security_group" "efs" {
  count = var.create_efs ? 1 : 0

  name        = "${var.project_name}-efs"
  description = "EFS mount targets: NFS from the workload nodes"
  vpc_id      = aws_vpc.main.id
  tags        = { Name = "${var.project_name}-efs" }
}

resource "aws_vpc_security_group_ingress_rule" "efs_nfs_from_nodes" {
  count = var.create_efs ? 1 : 0

  security_group_id            = aws_security_group.efs[0].id
  description                  = "NFS from the workload nodes"
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
  referenced_security_group_id = aws_security_group.nodes.id
}
