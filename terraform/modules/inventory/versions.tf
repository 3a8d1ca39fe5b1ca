# Provider-free on purpose: it only renders text, so `terraform init -backend=false`
# and `plan` work without downloading anything (tests/integration/test_terraform_inventory.py).
terraform {
  required_version = ">= 1.9"
}
