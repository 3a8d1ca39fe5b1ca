#!/usr/bin/env bash
# `make test`: lint (scripts/lint.sh: ruff, ansible-lint, syntax checks), then the whole
# pytest suite. pytest's exit code 5 (nothing collected)
# is a failure here. Under CI (CI=true, .ci/run) a skipped lab, guest or integration test
# fails too (tests/conftest.py); every run ends with the count of skipped tests and why.
set -uo pipefail
cd "$(dirname "$0")/.."
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
scripts/lint.sh || exit 1
# Two workers (pytest-xdist), a test module to one worker: the integration tests spend most
# of their time waiting on Ansible, CRIU and the workloads, so two of them share the 2 cores
# well; they share one lab per flavour (tests/integration/conftest.py).
.venv/bin/pytest -n 2 --dist loadfile "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "make test: pytest collected no tests - that is a failure" >&2
  exit 1
fi
exit "$rc"
