"""Unit-test set-up shared by tests/unit/ (tests/conftest.py holds what the whole suite shares).

`@pytest.mark.env(NAME="value", ...)`: environment variables set for that one test, e.g. the
fake CRIU's FAKE_CRIU_MODE - a test then says how its fakes behave in its decorator instead of
taking `monkeypatch` only to set them.
"""

from __future__ import annotations

import pytest

# fakes.py's assert_* helpers report their failures the way a test's own asserts do
pytest.register_assert_rewrite("fakes")


def pytest_configure(config: pytest.Config) -> None:
    # registered here: --strict-markers refuses a marker that is not declared
    config.addinivalue_line(
        "markers", "env(**variables): environment variables set for the test (monkeypatch)"
    )


@pytest.fixture(autouse=True)
def marked_environment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Set the variables of the test's `env` markers; monkeypatch undoes them afterwards."""
    for marker in request.node.iter_markers("env"):
        if marker.args:
            raise TypeError(f"pytest.mark.env takes NAME=value pairs only, got {marker.args}")
        for name, value in marker.kwargs.items():
            monkeypatch.setenv(name, value)
