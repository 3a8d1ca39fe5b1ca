resource "aws_vpc" "main" {
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true # EFS mount targets are reached by DNS name

  tags = { Name = "${var.project_name}-vpc" }
}

resource "aws_internet_gateway" "main" {
  vpc_id = aws_vpc.main.id
  tags   = { Name = "${var.project_name}-igw" }
}

# Public subnets: every instance gets a public address for outbound traffic (apt, pip,
# CRIU sources) without a NAT gateway; inbound is closed by the security groups.
resource "aws_subnet" "az" {
  for_each = local.azs

  vpc_id                  = aws_vpc.main.id
  availability_zone       = each.value.name
  cidr_block              = each.value.subnet_cidr
  map_public_ip_on_launch = true

  tags = { Name = "${var.project_name}-${each.value.name}" }
}

resource "aws_route_table" "public" {
  vpc_id = aws_vpc.main.id

  route {
    cidr_block = "0.0.0.0/0"
    gateway_id = aws_internet_gateway.main.id
  }

  tags = { Name = "${var.project_name}-public" }
}

resource "aws_route_table_association" "az" {
  for_each = aws_subnet.az

  subnet_id      = each.value.id
  route_table_id = aws_route_table.public.id
}

# S3 traffic (transfer=s3) stays on AWS's network and costs no data-processing fee.
resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.main.id
  service_name      = "com.amazonaws.${var.aws_region}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.public.id]

  tags = { Name = "${var.project_name}-s3" }
}
