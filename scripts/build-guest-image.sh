#!/usr/bin/env bash
# `make guest-image`: the soft-dirty guest lab's boot image (docs/lab.md, "The soft-dirty guest lab
# (QEMU)"): Debian 12's stock kernel (6.1, CONFIG_MEM_SOFT_DIRTY=y), a busybox
# initramfs that loads virtio + ext4 and switch_roots, and a minimal Debian 12 root
# filesystem (python3, sshd, rsync, strace, the workloads' Debian dependencies, the
# suite's CRIU at /usr/local/sbin/criu) as a raw ext4 image that every guest boots from
# through its own qcow2 overlay.
#
#   scripts/build-guest-image.sh [--print-dir] [--force]
#
# The image is cached in .cache/guest/images/<inputs hash>/ (and .cache/guest/current
# points at it); it is rebuilt only when an input changes: this script (the package
# list, the guest's init and sshd config are in it), the kernel package's version, the
# busybox-static version and the CRIU binary. GUEST_IMAGE_EXTRA_PACKAGES (space
# separated) adds Debian packages (e.g. ffmpeg, ~150 MB more) and is part of the hash.
# Needs root, debootstrap, busybox-static, cpio, e2fsprogs and the Debian mirror.
set -euo pipefail
SELF=$(readlink -f "$0")
cd "$(dirname "$SELF")/.."
REPO=$(pwd)
CACHE="$REPO/.cache/guest"
CRIU_BIN=${GUEST_CRIU_BIN:-/usr/local/sbin/criu}
SUITE=bookworm
ROOT_SIZE=2G
print_dir=false
force=false
for arg in "$@"; do
  case "$arg" in
    --print-dir) print_dir=true ;;
    --force) force=true ;;
    *) echo "usage: $0 [--print-dir] [--force]" >&2; exit 2 ;;
  esac
done
say() { $print_dir && echo "guest-image: $*" >&2 || echo "guest-image: $*"; }
die() { echo "guest-image: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, chroot)"
for tool in debootstrap busybox cpio mkfs.ext4 apt-get apt-cache dpkg-deb chroot sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing: run \`make setup\`"
done
[ -x "$CRIU_BIN" ] || die "no CRIU at $CRIU_BIN: run \`make setup\` (it builds CRIU 4.2.1)"

# -- what goes into the guest ---------------------------------------------------------
# Node side of the suite: Ansible's python3, sshd, rsync and zstd (transfers), strace (output
# capture), iproute2 (ss: port checks), kmod, procps, nftables (CRIU's network lock for
# --tcp-established), python3-venv (the workloads' venv), python3-boto3 (transfer=s3's
# tools/s3_transfer.py); workloads: numpy (matmul,
# dataproc), redis-server + python3-redis (redis). Not torch (ml_training) nor, by
# default, ffmpeg (video): too big for a lab image.
PACKAGES=(
  python3 python3-venv openssh-server openssh-sftp-server rsync zstd strace iproute2 kmod procps
  nftables python3-numpy python3-redis redis-server python3-boto3
)
# CRIU's runtime libraries: the packages of what `ldd` finds for the binary on this (Debian
# 12) machine. Debian's own criu package is not installed, so nothing shadows ours.
# (looked up once per CRIU binary: dpkg -S is slow; by file name, since some packages
# register /lib/..., others /usr/lib/... - merged /usr)
criu_sha=$(sha256sum "$CRIU_BIN" | cut -d' ' -f1)
libs_cache="$CACHE/criu-libs.$criu_sha"
if [ ! -s "$libs_cache" ]; then
  mkdir -p "$CACHE"
  mapfile -t criu_lib_paths < <(ldd "$CRIU_BIN" | awk '/=> \//{print $3}')
  for lib in "${criu_lib_paths[@]}"; do echo "*/$(basename "$(readlink -f "$lib")")"; done \
    | xargs dpkg -S 2>/dev/null | cut -d: -f1 | sort -u >"$libs_cache.tmp"
  mv "$libs_cache.tmp" "$libs_cache"
fi
mapfile -t criu_libs <"$libs_cache"
read -r -a extra <<<"${GUEST_IMAGE_EXTRA_PACKAGES:-}"
PACKAGES+=("${criu_libs[@]}" "${extra[@]}")

# The kernel: the package (and exact version) linux-image-amd64 depends on, from this
# machine's apt lists.
read -r kernel_pkg kernel_version < <(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null \
  | sed -n 's/^Depends: \(linux-image-[0-9][^ ]*\) (= \([^)]*\)).*/\1 \2/p' | head -1) || true
[ -n "${kernel_pkg:-}" ] || die "apt does not know linux-image-amd64: run apt-get update"
busybox_version=$(dpkg-query -W -f='${Version}' busybox-static)
inputs_hash=$(
  {
    sha256sum "$SELF" | cut -d' ' -f1
    echo "${PACKAGES[*]}"
    echo "$kernel_pkg $kernel_version"
    echo "busybox $busybox_version"
    echo "criu $criu_sha"
  } | sha256sum | cut -c1-16
)
IMAGE="$CACHE/images/$inputs_hash"

finish() {
  ln -sfn "images/$inputs_hash" "$CACHE/current"
  if $print_dir; then echo "$IMAGE"; fi
}
if [ -f "$IMAGE/manifest.json" ] && ! $force; then
  say "up to date: $IMAGE ($kernel_pkg $kernel_version, CRIU ${criu_sha:0:12})"
  finish
  exit 0
fi

t0=$(date +%s.%N)
say "building $IMAGE ($kernel_pkg $kernel_version; ${#PACKAGES[@]} packages; cold builds take 1-2 minutes)"
BUILD="$CACHE/build-$inputs_hash"
cleanup() {
  # debootstrap mounts /proc and /sys in the chroot; never delete through a mount
  { grep -o " $BUILD/[^ ]*" /proc/mounts || true; } | sort -r | while read -r mnt; do umount -l "$mnt"; done
  rm -rf --one-file-system "$BUILD"
}
cleanup
mkdir -p "$BUILD" "$CACHE/debs" "$CACHE/images"
trap cleanup EXIT
trap 'exit 130' INT TERM
ROOTFS="$BUILD/rootfs"

# -- the root filesystem ----------------------------------------------------------------
mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
mirror=${mirror:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)}
[ -n "$mirror" ] || die "no Debian mirror in /etc/apt/sources.list.d/debian.sources"
# No service may start inside the chroot (redis-server's postinst would start one on
# this machine): policy-rc.d is in place before any package is configured.
mkdir -p "$ROOTFS/usr/sbin"
printf '#!/bin/sh\nexit 101\n' >"$ROOTFS/usr/sbin/policy-rc.d"
chmod 0755 "$ROOTFS/usr/sbin/policy-rc.d"
include=$(IFS=,; echo "${PACKAGES[*]}")
if ! debootstrap --variant=minbase --include="$include" --cache-dir="$CACHE/debs" \
    "$SUITE" "$ROOTFS" "$mirror" >"$BUILD/debootstrap.log" 2>&1; then
  tail -20 "$BUILD/debootstrap.log" >&2
  die "debootstrap failed (log above)"
fi
t_boot=$(date +%s.%N)

# -- the kernel and its modules -----------------------------------------------------------
kernel_deb=$(ls "$CACHE/debs/${kernel_pkg}_"*"_amd64.deb" 2>/dev/null | head -1 || true)
if [ -z "$kernel_deb" ] || ! dpkg-deb -f "$kernel_deb" Version | grep -qx "$kernel_version"; then
  (cd "$CACHE/debs" && apt-get -o APT::Sandbox::User=root download -q "$kernel_pkg=$kernel_version" >/dev/null)
  kernel_deb=$(ls "$CACHE/debs/${kernel_pkg}_"*"_amd64.deb" | head -1)
fi
dpkg-deb -x "$kernel_deb" "$BUILD/kernel"
kver=${kernel_pkg#linux-image-}
mkdir -p "$BUILD/out" "$ROOTFS/lib/modules"
cp "$BUILD/kernel/boot/vmlinuz-$kver" "$BUILD/out/vmlinuz"
cp "$BUILD/kernel/boot/config-$kver" "$BUILD/out/config"
grep -qx 'CONFIG_MEM_SOFT_DIRTY=y' "$BUILD/out/config" || die "$kernel_pkg has no CONFIG_MEM_SOFT_DIRTY"
# Modules a headless virtio guest never loads stay out (about half the size).
cp -a "$BUILD/kernel/lib/modules/$kver" "$ROOTFS/lib/modules/"
for unused in drivers/gpu drivers/media drivers/net/wireless drivers/infiniband drivers/staging \
    drivers/iio drivers/bluetooth drivers/usb drivers/hid drivers/input sound net/bluetooth \
    net/wireless net/mac80211; do
  rm -rf "$ROOTFS/lib/modules/$kver/kernel/$unused"
done
chroot "$ROOTFS" depmod "$kver"

# -- the initramfs: busybox, virtio + ext4 modules, switch_root to the guest's init ------------
INITRD="$BUILD/initrd"
mkdir -p "$INITRD"/{bin,dev,proc,sys,newroot,lib/modules}
cp "$(command -v busybox)" "$INITRD/bin/busybox"
# crc32c_generic: ext4's metadata checksums need it and nothing would modprobe it here.
for module in virtio_pci virtio_blk crc32c_generic ext4; do
  chroot "$ROOTFS" modprobe -S "$kver" --show-depends "$module"
done | awk '$1 == "insmod" && !seen[$2]++ {print $2}' >"$BUILD/initrd-modules"
: >"$INITRD/modules"
while read -r ko; do
  cp "$ROOTFS$ko" "$INITRD/lib/modules/"
  basename "$ko" >>"$INITRD/modules"
done <"$BUILD/initrd-modules"
cat >"$INITRD/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for ko in $(cat /modules); do insmod "/lib/modules/$ko" || echo "initramfs: insmod $ko failed"; done
i=0
while [ ! -b /dev/vda ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
mount -t ext4 -o rw /dev/vda /newroot || { echo "initramfs: cannot mount /dev/vda"; exec sh; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/criu-lab-init
EOF
chmod 0755 "$INITRD/init"
(cd "$INITRD" && find . | cpio -o -H newc --quiet | gzip -1 >"$BUILD/out/initrd.img")

# -- the suite's CRIU, sshd, the guest's init -------------------------------------------------
install -m 0755 "$CRIU_BIN" "$ROOTFS/usr/local/sbin/criu"
chroot "$ROOTFS" /usr/local/sbin/criu --version >"$BUILD/criu-version" 2>&1 \
  || die "CRIU does not run in the guest's root filesystem: $(cat "$BUILD/criu-version")"
# The workloads' interpreter, as on every node (docs/architecture.md): a venv made from
# /usr/bin/python3 with the system's site packages (numpy, redis).
chroot "$ROOTFS" /usr/bin/python3 -m venv --system-site-packages /opt/criu-migration/venv
mkdir -p "$ROOTFS/opt/criu-migration/workloads" "$ROOTFS/etc/criu-lab" "$ROOTFS/root/.ssh"
chmod 0700 "$ROOTFS/root/.ssh"
# Ansible runs every module from a zip (AnsiballZ) whose sources Python compiles afresh
# each time - about a third of a task's time on an emulated CPU. This hook caches the
# compiled code of zip-imported modules by the sha256 of their source (and the
# interpreter's cache tag), so a guest compiles each of Ansible's files once.
cat >"$ROOTFS/usr/lib/python3/dist-packages/criu_lab_pyc_cache.py" <<'PYHOOK'
"""criu-lab guests: cache the bytecode of modules imported from zip files (AnsiballZ)."""
import hashlib
import marshal
import os
import sys
import zipimport

_CACHE = "/var/cache/criu-lab-pyc"
_TAG = sys.implementation.cache_tag.encode()
_compile_source = getattr(zipimport, "_compile_source", None)


def _cached_compile_source(pathname, source):
    path = os.path.join(_CACHE, hashlib.sha256(_TAG + b"\0" + source).hexdigest())
    try:
        with open(path, "rb") as cached:
            return marshal.load(cached)
    except (OSError, EOFError, ValueError, TypeError):
        pass
    code = _compile_source(pathname, source)
    try:
        os.makedirs(_CACHE, exist_ok=True)
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "wb") as out:
            marshal.dump(code, out)
        os.replace(tmp, path)
    except OSError:
        pass
    return code


if _compile_source is not None:
    zipimport._compile_source = _cached_compile_source
PYHOOK
echo "import criu_lab_pyc_cache" >"$ROOTFS/usr/lib/python3/dist-packages/criu-lab-pyc-cache.pth"
# Host keys come per guest from its config disk (pinned by the lab), never from the image.
rm -f "$ROOTFS"/etc/ssh/ssh_host_*
cat >"$ROOTFS/etc/ssh/sshd_config" <<'EOF'
# criu-lab guest: key authentication only; the host key comes from the guest's config disk.
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
UsePAM no
UseDNS no
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp /usr/lib/openssh/sftp-server
AcceptEnv LANG LC_*
EOF
cat >"$ROOTFS/sbin/criu-lab-init" <<'EOF'
#!/bin/sh
# PID 1 of a criu-lab guest. Name, address and mode come from the kernel command line
# (crlab.name= crlab.addr= crlab.mode=), keys from the config disk (/dev/vdb, a tar).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    crlab.name=*) name=${arg#*=} ;;
    crlab.addr=*) addr=${arg#*=} ;;
    crlab.mode=*) mode=${arg#*=} ;;
  esac
done
hostname "${name:-guest}"
echo "${name:-guest}" >/etc/hostname
modprobe virtio_net
modprobe virtio_rng 2>/dev/null
ip link set lo up
[ -n "$addr" ] && ip addr add "$addr" dev eth0
ip link set eth0 up
tar -xpf /dev/vdb -C / 2>/dev/console || echo "criu-lab-init: no config disk" >/dev/console
# The node-local experiment disk (checkpoints, working dirs), as in the namespaces lab.
mkdir -p /var/lib/criu-migration
mount -t tmpfs -o mode=0755,size=70% tmpfs /var/lib/criu-migration
# Source hosts allocate PIDs from 16000 up, so a restored PID is free on its destination.
[ "$mode" = source ] && echo 16000 >/proc/sys/kernel/ns_last_pid
mkdir -p /run/sshd
/usr/sbin/sshd -E /var/log/sshd.log
echo "criu-lab-init: ${name:-guest} ($addr, $mode) up" >/dev/console
# Reap every orphan: a zombie holding PID N would make a restore of PID N fail.
exec /usr/bin/python3 -c '
import os, time
while True:
    try:
        os.wait()
    except ChildProcessError:
        time.sleep(0.2)
' criu-lab-init
EOF
chmod 0755 "$ROOTFS/sbin/criu-lab-init"
# Slimmer image: no apt lists or package cache, no docs, man pages or locales.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
  "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
  "$ROOTFS"/usr/share/locale/*
rm -f "$ROOTFS/usr/sbin/policy-rc.d"

# -- the disk ------------------------------------------------------------------------------------
rootfs_mb=$(du -sm "$ROOTFS" | cut -f1)
truncate -s "$ROOT_SIZE" "$BUILD/out/root.img"
mkfs.ext4 -q -F -L criu-lab-root -d "$ROOTFS" "$BUILD/out/root.img"
t1=$(date +%s.%N)
build_s=$(python3 -c "print(round($t1 - $t0, 1))")
debootstrap_s=$(python3 -c "print(round($t_boot - $t0, 1))")
cat >"$BUILD/out/manifest.json" <<EOF
{
  "inputs_hash": "$inputs_hash",
  "kernel_package": "$kernel_pkg",
  "kernel_package_version": "$kernel_version",
  "kernel_release": "$kver",
  "busybox_static": "$busybox_version",
  "criu_sha256": "$criu_sha",
  "criu_version": "$(sed -n 's/^Version: //p' "$BUILD/criu-version")",
  "criu_path": "/usr/local/sbin/criu",
  "packages": "$(echo "${PACKAGES[*]}")",
  "rootfs_mb": $rootfs_mb,
  "root_image_size": "$ROOT_SIZE",
  "build_s": $build_s,
  "debootstrap_s": $debootstrap_s,
  "built_at": "$(date -u +%Y-%m-%dT%H:%M:%SZ)"
}
EOF
rm -rf "$IMAGE"
mv "$BUILD/out" "$IMAGE"
# Older images are never booted again; the .deb cache stays for the next rebuild.
for old in "$CACHE"/images/*; do
  [ "$old" = "$IMAGE" ] || rm -rf "$old"
done
say "built in ${build_s} s (debootstrap ${debootstrap_s} s, root filesystem ${rootfs_mb} MB): $IMAGE"
finish
