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
