#!/usr/bin/python
"""Ansible module: pack a host's experiment logs and small CRIU images for collection."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: results_bundle
short_description: Pack an experiment's logs and small image files on a host into one tarball
description:
  - Packs what the results folder keeps from one host into a gzip tarball that one
    C(fetch) brings to the control node - CRIU's logs and the small image files and stats of
    each checkpoint folder under I(checkpoint_dir) (page images only with I(keep_images)),
    and the protocol files of the workload's I(working_dir) (C(progress.log),
    C(workload_error.log)).
  - Missing folders and files are skipped, never an error - collection runs after failures too.
  - Every member is stored readable by its owner only - files 0600, their folders 0700 -
    whatever its mode on the host, so the results keep the images as private as the hosts do.
options:
  checkpoint_dir:
    description: The experiment's checkpoint folder on this host.
    type: path
    required: true
  working_dir:
    description: The workload's working directory on this host.
    type: path
    required: true
  dest:
    description: Where to write the tarball on this host.
    type: path
    required: true
  keep_images:
    description: Include CRIU's page images (C(pages-*.img)), which can be large.
    type: bool
    default: false
  images_dir:
    description: The checkpoint images' folder when it is not under I(checkpoint_dir) (e.g. on a
      shared filesystem with the efs transfer); its small files are packed at the top level,
      as if it were I(checkpoint_dir).
    type: path
  working_files:
    description: Files of I(working_dir) to include.
    type: list
    elements: str
    default: [progress.log, workload_error.log, checkpoint_ready]
attributes:
  check_mode:
    support: none
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: Pack the source's results
  results_bundle:
    checkpoint_dir: /var/lib/criu-migration/images/e1
    working_dir: /var/lib/criu-migration/work/e1
    dest: /var/lib/criu-migration/images/e1.results.tgz
"""

RETURN = r"""
dest:
  description: The tarball.
  returned: always
  type: str
  sample: /var/lib/criu-migration/images/e1.results.tgz
files:
  description: Paths inside the tarball.
  returned: always
  type: list
  elements: str
  sample: [criu-dump.log, 1/stats-dump, progress.log]
bytes:
  description: Uncompressed size of what was packed.
  returned: always
  type: int
  sample: 104857
"""

import tarfile
import time
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.private_files import DIR_MODE, FILE_MODE, private_umask


def private_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """A member readable by its owner only once unpacked (the images hold the workload's
    memory, the working files what it wrote)."""
    info.mode = DIR_MODE if info.isdir() else FILE_MODE
    return info


def is_page_image(path: Path) -> bool:
    return path.name.startswith("pages-") and path.suffix == ".img"


def main() -> None:
    private_umask()  # the experiment's files: 0600 / 0700 (module_utils/private_files.py)
    module = AnsibleModule(
        argument_spec={
            "checkpoint_dir": {"type": "path", "required": True},
            "working_dir": {"type": "path", "required": True},
            "dest": {"type": "path", "required": True},
            "keep_images": {"type": "bool", "default": False},
            "images_dir": {"type": "path"},
            "working_files": {
                "type": "list",
                "elements": "str",
                "default": ["progress.log", "workload_error.log", "checkpoint_ready"],
            },
        },
        supports_check_mode=False,
    )
    p = module.params
    checkpoint_dir, working_dir, dest = (
        Path(p["checkpoint_dir"]),
        Path(p["working_dir"]),
        Path(p["dest"]),
    )
    members: list[tuple[Path, str]] = []
    roots = [checkpoint_dir]
    if p["images_dir"] and Path(p["images_dir"]) != checkpoint_dir:
        roots.append(Path(p["images_dir"]))
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            wanted = p["keep_images"] or not is_page_image(path)
            if (
                path.is_file()
                and not path.is_symlink()
                and wanted
                and path.resolve() != dest.resolve()
            ):
                members.append((path, str(path.relative_to(root))))
    for name in p["working_files"]:
        path = working_dir / name
        if path.is_file():
            members.append((path, name))
    dest.parent.mkdir(parents=True, exist_ok=True)
    total = 0
    with tarfile.open(dest, "w:gz", compresslevel=1) as tar:
        # root only wherever it is unpacked (module_utils/private_files.py): every folder a
        # member lies in as 0700, before its files, and every file 0600
        folders: set[str] = set()
        for _path, arcname in members:
            for parent in reversed(Path(arcname).parents[:-1]):
                if str(parent) not in folders:
                    folders.add(str(parent))
                    info = tarfile.TarInfo(str(parent))
                    info.type, info.mode, info.mtime = tarfile.DIRTYPE, DIR_MODE, int(time.time())
                    tar.addfile(info)
        for path, arcname in members:
            tar.add(path, arcname=arcname, recursive=False, filter=private_member)
            total += path.stat().st_size
    module.exit_json(
        changed=True, dest=str(dest), files=[arcname for _, arcname in members], bytes=total
    )


if __name__ == "__main__":
    main()
