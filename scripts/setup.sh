#!/usr/bin/env bash
# `make setup`: everything the suite needs on a fresh Debian 12 machine, as root.
# Idempotent: a second run checks, changes nothing and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
VENV="$REPO/.venv"
STAMP_DIR="$REPO/.cache/setup"
mkdir -p "$STAMP_DIR"
t0=$(date +%s.%N)
changed=()

if [ "$(id -u)" != 0 ]; then
  echo "make setup must run as root (it installs Debian packages, CRIU and the lab's tools)." >&2
  exit 1
fi

# Debian packages: the lab (sshd, namespaces, bridge), the transfers (rsync, zstd), output
# capture (strace), CRIU's network lock (nftables), the workloads' real parts (redis-server,
# ffmpeg, numpy and the redis client for the nodes' /usr/bin/python3), boto3 for the nodes'
# S3 transfer tool (/usr/bin/python3), the guest lab
# (qemu, debootstrap) and Python's venv.
APT_PACKAGES=(
  openssh-server openssh-client rsync zstd strace nftables iproute2 procps psmisc util-linux
  redis-server ffmpeg python3 python3-venv python3-numpy python3-redis python3-boto3
  qemu-system-x86 qemu-utils debootstrap e2fsprogs cpio busybox-static
  ca-certificates xz-utils
)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >"$STAMP_DIR/apt.log" 2>&1 || { cat "$STAMP_DIR/apt.log"; exit 1; }
  # policy-rc.d: packages such as redis-server must not start services on this machine
  # (the lab's hosts start their own).
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >>"$STAMP_DIR/apt.log" 2>&1 \
    || { tail -30 "$STAMP_DIR/apt.log"; exit 1; }
  changed+=("debian packages")
fi

# The control node's virtualenv, pinned (requirements.txt).
req_hash=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x "$VENV/bin/ansible-playbook" ] || [ "$(cat "$STAMP_DIR/venv" 2>/dev/null)" != "$req_hash" ]; then
  echo "setup: building the control virtualenv in .venv (requirements.txt)"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q -r requirements.txt >"$STAMP_DIR/pip.log" 2>&1 \
    || { tail -30 "$STAMP_DIR/pip.log"; exit 1; }
  echo "$req_hash" > "$STAMP_DIR/venv"
  changed+=("control virtualenv")
fi

# CRIU (the criu role) and the workloads' node-side dependencies, on this machine: the
# lab's hosts share its filesystem.
# The playbook is skipped when nothing it depends on changed since its last success and
# the installed CRIU still passes `criu check` (a stamp of its inputs and the binary).
export ANSIBLE_CONFIG="$REPO/ansible.cfg"
playbook_inputs_hash() {
  # a missing CRIU binary is an input too (cat fails on it: hash what is there)
  { cat playbooks/setup.yml roles/criu/*/*.yml roles/workload_deps/*/*.yml workloads/*.yml \
      /usr/local/sbin/criu 2>/dev/null || true; } | sha256sum | cut -d' ' -f1
}
inputs_hash=$(playbook_inputs_hash)
criu_line=$(cat "$STAMP_DIR/criu-line" 2>/dev/null || true)
if [ "$(cat "$STAMP_DIR/playbook" 2>/dev/null)" = "$inputs_hash" ] \
   && /usr/local/sbin/criu check >/dev/null 2>&1; then
  :
else
  out=$("$VENV/bin/ansible-playbook" -i localhost, playbooks/setup.yml 2>&1) || { echo "$out"; exit 1; }
  summary=$(printf '%s\n' "$out" | grep -E '^localhost +:' || true)
  if printf '%s' "$summary" | grep -qE 'changed=[1-9]'; then
    printf '%s\n' "$out" | grep -E '^(TASK|changed:)' | grep -B1 '^changed' | grep '^TASK' | sed 's/^/setup: /'
    changed+=("CRIU / workload dependencies")
  fi
  criu_line=$(printf '%s\n' "$out" | grep -oE 'CRIU [0-9.]+ at [^"]+' | head -1 || true)
  # hash again: the playbook may just have installed /usr/local/sbin/criu
  playbook_inputs_hash > "$STAMP_DIR/playbook"
  printf '%s' "$criu_line" > "$STAMP_DIR/criu-line"
fi

t1=$(date +%s.%N)
elapsed=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
if [ ${#changed[@]} -eq 0 ]; then
  echo "setup: nothing to do, everything is installed (${elapsed} s). ${criu_line}"
else
  echo "setup: done in ${elapsed} s; changed: ${changed[*]}. ${criu_line}"
fi
