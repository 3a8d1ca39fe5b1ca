#!/usr/bin/env bash
# `make test`: lint (scripts/lint.sh: ruff, ansible-lint, syntax checks), then the whole
# pytest suite. pytest's exit code 5 (nothing collected)
# is a failure here. Under CI (CI=true, .ci/run) a skipped lab, guest or integration test
# fails too (tests/conftest.py); every run ends with the count of skipped tests and why.
set -uo pipefail
cd "$(dirname "$0")/.."
export ANSIBLE_CONFIG="$PWD/ansible.cfg"
scripts/lint.sh || exit 1
.venv/bin/pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "make test: pytest collected no tests - that is a failure" >&2
  exit 1
fi
exit "$rc"
