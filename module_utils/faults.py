"""Faults the suite injects for real, to test that a failed migration loses nothing.

`CORRUPT_PAGE_IMAGE_SH` flips one byte of a checkpoint's largest page image. It is a
POSIX shell script so that it runs the same way wherever the images are: locally (the
`fault_inject` module, stepwise) and on the destination over the fused critical path's
SSH connection, where no module code runs. Standard library only (this file runs on the
nodes).
"""

from __future__ import annotations

from typing import Any

# sh -c SCRIPT NAME FOLDER: flips the middle byte of FOLDER's largest pages-*.img and prints
# "<file> <offset> <old byte> <new byte>"; fails naming the folder when there is none.
CORRUPT_PAGE_IMAGE_SH = r"""set -eu
f=$(ls -S "$1"/pages-*.img 2>/dev/null | head -n 1) || true
if [ -z "$f" ] || [ ! -s "$f" ]; then
  echo "no page image (pages-*.img) in $1 to corrupt" >&2
  exit 1
fi
size=$(stat -c %s "$f")
offset=$((size / 2))
old=$(od -An -tu1 -j "$offset" -N1 "$f" | tr -d ' ')
new=$((old ^ 255))
printf "$(printf '\\%03o' "$new")" | dd of="$f" bs=1 seek="$offset" conv=notrunc status=none
echo "$f $offset $old $new"
"""


def parse_corruption(output: str) -> dict[str, Any]:
    """What CORRUPT_PAGE_IMAGE_SH altered: file, offset, old and new byte."""
    text = (output or "").strip()
    # the three numbers are the last words: the file's path may hold spaces
    fields = text.rsplit(maxsplit=3)
    if len(fields) != 4 or not all(field.isdigit() for field in fields[1:]):
        return {"output": text}
    path, offset, old, new = fields
    return {"file": path, "offset": int(offset), "old": int(old), "new": int(new)}


# CRIU's --action-script for the final dump (inject_fault=dump_fails / dump_crashes): CRIU
# runs it at each stage with the stage in CRTOOLS_SCRIPT_ACTION, as its own child. At
# post-dump every image is written and the tree is still frozen (network locked, TCP
# sockets in repair mode):
# - dump_fails: the script fails there; CRIU undoes the dump itself (network unlocked,
#   repair mode off, the tree resumed) and fails - a dump that fails half way;
# - dump_crashes: the script kills CRIU (SIGKILL) there; the kernel lets the tree run on as
#   its tracer is gone, but CRIU's network lock and the sockets' repair mode stay behind.
DUMP_FAULT_SCRIPTS = {
    "dump_fails": '#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] && exit 1\nexit 0\n',
    "dump_crashes": (
        '#!/bin/sh\n[ "$CRTOOLS_SCRIPT_ACTION" = post-dump ] && kill -KILL "$PPID"\nexit 0\n'
    ),
}
DUMP_FAULT_SCRIPT = "fault-action-script.sh"

# inject_fault=disk_full - sh -c SCRIPT NAME FOLDER: fills FOLDER's filesystem up to 256 KiB
# with FOLDER/pages-fault-disk-full.img and prints "<file> <bytes>". The destination's disk
# fills after the space check, as if something else had written there meanwhile. Named like
# a page image, the filler stays out of the results (library/results_bundle.py) and goes
# with the checkpoint folder.
DISK_FULL_FILE = "pages-fault-disk-full.img"
DISK_FULL_SH = r"""set -eu
avail=$(df -P -B1 "$1" | awk 'NR == 2 {print $4}')
size=$((avail - 262144))
[ "$size" -gt 0 ] || size=0
f="$1/pages-fault-disk-full.img"
fallocate -l "$size" "$f" 2>/dev/null || head -c "$size" /dev/zero > "$f"
echo "$f $size"
"""
# A disk_full fault takes at most this much (the lab makes the destination's disk small).
DISK_FULL_MAX_BYTES = 1 << 30
