"""Rolling the default back to the previous version: admin API and `confidence adapters rollback`."""

from __future__ import annotations

import json

import pytest

from service.app import build_app
from service.cli import main
from service.settings import Settings
from tests.fake_engine import FakeEngine
from tests.http_server import serve_in_thread
from tests.unit.conftest import write_adapter

TOKEN = "rollback-token"


@pytest.fixture
def server(settings: Settings):
    settings = Settings.model_validate({**settings.model_dump(), "admin_token": TOKEN})
    with serve_in_thread(build_app(settings, engine=FakeEngine())) as url:
        yield url


def listing(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_rollback_returns_to_the_previous_default_and_skips_unloaded_ones(
    server, adapter_root, capsys, monkeypatch
):
    monkeypatch.setenv("CONFIDENCE_ADMIN_TOKEN", TOKEN)
    for version in ("v2", "v3"):
        write_adapter(adapter_root, "default-unc", version)
        assert main(["adapters", "--url", server, "load", "default-unc", version, "--default"]) == 0
        loaded = listing(capsys)
    assert loaded["default"] == "default-unc@v3" and loaded["previous_default"] == "default-unc@v2"
    # v2 goes away: the rollback from v3 returns to v1, the newest earlier default still loaded.
    assert main(["adapters", "--url", server, "unload", "default-unc@v2"]) == 0
    capsys.readouterr()
    assert main(["adapters", "--url", server, "rollback", "default-unc"]) == 0
    body = listing(capsys)
    assert body["default"] == "default-unc@v1"
    current = {a["version"] for a in body["adapters"] if a["name"] == "default-unc" and a["current"]}
    assert current == {"v1"}
    # Nothing earlier than v1: a second rollback is refused and changes nothing.
    assert main(["adapters", "--url", server, "rollback", "default-unc"]) == 1
    assert "HTTP 409" in capsys.readouterr().err
    assert main(["adapters", "--url", server, "list"]) == 0
    assert listing(capsys)["default"] == "default-unc@v1"


def test_rollback_of_a_name_that_is_not_the_default_is_refused(server, capsys, monkeypatch):
    monkeypatch.setenv("CONFIDENCE_ADMIN_TOKEN", TOKEN)
    assert main(["adapters", "--url", server, "rollback", "other"]) == 1
    assert "not the default" in capsys.readouterr().err
