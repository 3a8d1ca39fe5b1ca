#!/usr/bin/env bash
# `make lint` (and the first step of `make test`): ruff on the Python, ansible-lint (the
# production profile, offline: .ansible-lint) on the playbooks and roles, the syntax check
# of every playbook, and the README's generated settings table.
set -euo pipefail
cd "$(dirname "$0")/.."
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
# ansible-lint runs ansible-playbook --syntax-check itself: the venv's, from PATH
export PATH="$PWD/.venv/bin:$PATH"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
for playbook in migrate.yml playbooks/*.yml; do
  .venv/bin/ansible-playbook --syntax-check "$playbook" >/dev/null
done
.venv/bin/ansible-lint -q --nocolor
.venv/bin/python scripts/settings_table.py --check
