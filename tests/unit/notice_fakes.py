"""What the spot-notice tests share: the fake metadata services (scripts/fake_metadata.py)
served in a thread on 127.0.0.1, and a module runner.

Not a test module: the tests import it by name (pytest puts tests/unit/ on sys.path).
Nothing here contacts a real metadata service.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from ansible.module_utils.testing import patch_module_args

REPO = Path(__file__).resolve().parents[2]


def _load_fake_metadata() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "fake_metadata", REPO / "scripts" / "fake_metadata.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


fake_metadata = _load_fake_metadata()


@dataclass
class Fake:
    """A fake metadata service serving in a thread."""

    provider: str
    url: str
    server: Any

    @property
    def state(self) -> Any:
        return self.server.state

    def notice(self, **spec: Any) -> dict[str, Any]:
        return fake_metadata.admin(self.url, "/_admin/notice", spec)

    def fault(self, fault: str, seconds: float = 5.0) -> None:
        fake_metadata.admin(self.url, "/_admin/fault", {"fault": fault, "seconds": seconds})

    def snapshot(self) -> dict[str, Any]:
        return fake_metadata.admin(self.url, "/_admin/state")

    def requests(self, path_prefix: str = "/") -> list[dict[str, Any]]:
        return [r for r in self.snapshot()["requests"] if r["path"].startswith(path_prefix)]


@contextmanager
def serving(provider: str, **kw: Any) -> Iterator[Fake]:
    server = fake_metadata.make_server(provider, "127.0.0.1", 0, **kw)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield Fake(provider, f"http://127.0.0.1:{server.server_address[1]}", server)
    finally:
        server.shutdown()
        server.server_close()


def closed_port_url() -> str:
    """A URL on which nothing listens (the port was just free)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def run_module(
    module: ModuleType,
    args: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    check_mode: bool = False,
) -> tuple[int, dict[str, Any]]:
    """`module.main()` as Ansible runs it: its exit status and the JSON it printed."""
    capsys.readouterr()
    if check_mode:
        args = {**args, "_ansible_check_mode": True}
    with patch_module_args(args), pytest.raises(SystemExit) as excinfo:
        module.main()
    return int(excinfo.value.code or 0), json.loads(capsys.readouterr().out)
