#!/usr/bin/python
"""Ansible module: a checksummed CRIU source tarball in a cache folder."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: criu_source
short_description: Fetch and cache a checksummed CRIU source tarball
description:
  - Leaves C(criu-<version>.tar.*) in I(cache_dir), checked against I(sha256). A cached
    tarball with the right checksum is reused without any network access.
  - With I(source_url), downloads that URL.
  - Without it, takes the upstream tarball of Debian's C(criu) source package (suite
    I(debian_suite)) through apt, without touching the system's apt configuration - a
    private sources folder whose URI and keyring are read from I(debian_sources), and
    private package lists. The tarball is checked against the C(.dsc)'s
    C(Checksums-Sha256) line and against I(sha256).
  - Meant to run on the control node; the C(criu) role copies the tarball to the hosts
    that need a build.
options:
  version:
    description: CRIU's upstream version.
    type: str
    required: true
  sha256:
    description: Expected SHA-256 of the tarball.
    type: str
    required: true
  cache_dir:
    description: Folder that keeps the tarball between runs.
    type: path
    required: true
  source_url:
    description: Download the tarball from this URL instead of Debian's source package.
    type: str
  debian_sources:
    description: The deb822 sources file whose C(URIs) and C(Signed-By) are reused.
    type: path
    default: /etc/apt/sources.list.d/debian.sources
  debian_suite:
    description: The Debian suite whose source package carries I(version).
    type: str
    default: sid
attributes:
  check_mode:
    support: full
    details: In check mode nothing is downloaded; C(changed) says whether a download is due.
notes:
  - C(apt-get source --download-only) exits 100 on these mirrors because the
    C(.debian.tar.xz) is missing; only the C(.dsc) and the upstream tarball are needed.
author: CRIU migration suite
"""

EXAMPLES = r"""
- name: CRIU 4.2.1 source, cached on the control node
  criu_source:
    version: 4.2.1
    sha256: 29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
    cache_dir: "{{ playbook_dir }}/.cache/criu"
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
path:
  description: The cached tarball.
  returned: always
  type: str
  sample: /work/main/.cache/criu/criu_4.2.1.orig.tar.xz
sha256:
  description: Its SHA-256.
  returned: always
  type: str
  sample: 29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
origin:
  description: Where it came from (cache, url, debian-source).
  returned: always
  type: str
  sample: cache
"""

import hashlib
import re
import shutil
import tempfile
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import fetch_url


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_deb822_sources(text: str) -> list[dict[str, str]]:
    """Paragraphs of a deb822 .sources file as dicts (comments dropped)."""
    paragraphs: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        if not line.strip():
            if current:
                paragraphs.append(current)
            current = {}
            continue
        key, _, value = line.partition(":")
        current[key.strip()] = value.strip()
    if current:
        paragraphs.append(current)
    return paragraphs


def debian_archive(text: str) -> tuple[str, str]:
    """The main archive's URI and keyring (not the security archive)."""
    for paragraph in parse_deb822_sources(text):
        suites = paragraph.get("Suites", "").split()
        if any(not suite.endswith("-security") for suite in suites) and paragraph.get("URIs"):
            return paragraph["URIs"].split()[0], paragraph.get("Signed-By", "")
    raise ValueError("no main Debian archive (URIs + Suites) in the sources file")


def dsc_sha256(dsc_text: str, filename: str) -> str | None:
    """The Checksums-Sha256 entry of `filename` in a .dsc."""
    in_block = False
    for line in dsc_text.splitlines():
        if line.startswith("Checksums-Sha256:"):
            in_block = True
            continue
        if in_block:
            if not line.startswith(" "):
                break
            parts = line.split()
            if len(parts) == 3 and parts[2] == filename:
                return parts[0]
    return None


class CriuSource:
    def __init__(self, module: AnsibleModule) -> None:
        self.module = module
        self.version: str = module.params["version"]
        self.sha256: str = module.params["sha256"].lower()
        self.cache_dir = Path(module.params["cache_dir"])

    def cached(self) -> Path | None:
        for candidate in sorted(self.cache_dir.glob(f"criu*{self.version}*.tar.*")):
            if sha256_of(candidate) == self.sha256:
                return candidate
        return None

    def from_url(self, url: str) -> Path:
        name = url.rstrip("/").rsplit("/", 1)[-1] or f"criu-{self.version}.tar.gz"
        if url.startswith("file://"):  # a local mirror: fetch_url reports no HTTP status for it
            local = Path(url[len("file://") :])
            if not local.is_file():
                self.module.fail_json(msg=f"cannot read {url}: no such file")
            with tempfile.NamedTemporaryFile(dir=self.cache_dir, delete=False) as handle:
                shutil.copyfileobj(local.open("rb"), handle)
            return self._accept(Path(handle.name), self.cache_dir / name, f"copied from {url}")
        response, info = fetch_url(self.module, url, timeout=120)
        if info.get("status") != 200:
            self.module.fail_json(
                msg=f"cannot download {url}: {info.get('msg')}", status=info.get("status")
            )
        with tempfile.NamedTemporaryFile(dir=self.cache_dir, delete=False) as handle:
            shutil.copyfileobj(response, handle)
        tmp = Path(handle.name)
        return self._accept(tmp, self.cache_dir / name, f"downloaded from {url}")

    def from_debian(self) -> Path:
        sources_file = Path(self.module.params["debian_sources"])
        try:
            uri, keyring = debian_archive(sources_file.read_text())
        except (OSError, ValueError) as exc:
            self.module.fail_json(
                msg=f"cannot read the Debian archive from {sources_file}: {exc}; "
                "set criu_source_url and criu_source_sha256 to download CRIU's tarball instead"
            )
        apt_dir = self.cache_dir / "apt"
        parts = apt_dir / "sources.list.d"
        lists = apt_dir / "lists"
        for folder in (parts, lists / "partial"):
            folder.mkdir(parents=True, exist_ok=True)
        entry = [
            "Types: deb-src",
            f"URIs: {uri}",
            f"Suites: {self.module.params['debian_suite']}",
            "Components: main",
        ]
        if keyring:
            entry.append(f"Signed-By: {keyring}")
        (parts / "criu-source.sources").write_text("\n".join(entry) + "\n")
        apt = [
            "apt-get",
            "-o", "Dir::Etc::SourceList=/dev/null",
            "-o", f"Dir::Etc::SourceParts={parts}",
            "-o", f"Dir::State::Lists={lists}",
        ]  # fmt: skip
        rc, out, err = self.module.run_command([*apt, "update"])
        if rc != 0:
            self.module.fail_json(
                msg=f"apt-get update of the private deb-src list failed: {err or out}"
            )
        showsrc = self.module.run_command(
            ["apt-cache", *apt[1:], "showsrc", "criu"], check_rc=False
        )[1]
        versions = re.findall(r"^Version:\s*(\S+)", showsrc, re.MULTILINE)
        wanted = [v for v in versions if v.split(":")[-1].split("-")[0] == self.version]
        if not wanted:
            self.module.fail_json(
                msg=f"Debian suite {self.module.params['debian_suite']} has no criu {self.version} "
                f"source (it has: {', '.join(versions) or 'none'}); set criu_source_url and "
                "criu_source_sha256 to a CRIU release tarball"
            )
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as work:
            # Exits 100 when the .debian.tar.xz is missing on the mirror; the .dsc and the
            # upstream tarball, all we need, have arrived by then.
            self.module.run_command(
                [*apt, "source", "--download-only", f"criu={wanted[0]}"], cwd=work
            )
            tarballs = sorted(Path(work).glob(f"criu_{self.version}.orig.tar.*"))
            dscs = sorted(Path(work).glob("criu_*.dsc"))
            if not tarballs or not dscs:
                self.module.fail_json(
                    msg=f"apt-get source criu={wanted[0]} did not deliver the .dsc and the tarball",
                    files=[p.name for p in Path(work).iterdir()],
                )
            tarball = tarballs[0]
            listed = dsc_sha256(dscs[0].read_text(), tarball.name)
            actual = sha256_of(tarball)
            if listed != actual:
                self.module.fail_json(
                    msg=f"{tarball.name}: sha256 {actual} does not match the .dsc's {listed}"
                )
            return self._accept(tarball, self.cache_dir / tarball.name, "Debian source package")

    def _accept(self, tmp: Path, final: Path, origin: str) -> Path:
        actual = sha256_of(tmp)
        if actual != self.sha256:
            tmp.unlink(missing_ok=True)
            self.module.fail_json(
                msg=f"criu_source_sha256 mismatch for CRIU {self.version} ({origin}): expected "
                f"{self.sha256}, got {actual}. Check the URL / version, then set "
                "criu_source_sha256 to the checksum the CRIU release publishes."
            )
        shutil.move(str(tmp), final)
        return final

    def run(self) -> dict[str, object]:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        hit = self.cached()
        if hit:
            return {"changed": False, "path": str(hit), "sha256": self.sha256, "origin": "cache"}
        if self.module.check_mode:
            return {"changed": True, "path": "", "sha256": self.sha256, "origin": "none"}
        url = self.module.params["source_url"]
        path = self.from_url(url) if url else self.from_debian()
        return {
            "changed": True,
            "path": str(path),
            "sha256": self.sha256,
            "origin": "url" if url else "debian-source",
        }


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "version": {"type": "str", "required": True},
            "sha256": {"type": "str", "required": True},
            "cache_dir": {"type": "path", "required": True},
            "source_url": {"type": "str"},
            "debian_sources": {"type": "path", "default": "/etc/apt/sources.list.d/debian.sources"},
            "debian_suite": {"type": "str", "default": "sid"},
        },
        supports_check_mode=True,
    )
    module.exit_json(**CriuSource(module).run())


if __name__ == "__main__":
    main()
