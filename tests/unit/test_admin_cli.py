"""`confidence adapters ...` against a real HTTP server (uvicorn on loopback, fake engine)."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from service.app import build_app
from service.cli import main
from service.settings import Settings
from tests.fake_engine import FakeEngine
from tests.http_server import serve_in_thread
from tests.unit.conftest import write_adapter

TOKEN = "cli-token"


@pytest.fixture
def server(settings: Settings) -> Iterator[str]:
    settings = Settings.model_validate({**settings.model_dump(), "admin_token": TOKEN})
    with serve_in_thread(build_app(settings, engine=FakeEngine())) as url:
        yield url


def test_cli_loads_switches_and_unloads(server, adapter_root, capsys, monkeypatch):
    monkeypatch.setenv("CONFIDENCE_ADMIN_TOKEN", TOKEN)
    write_adapter(adapter_root, "default-unc", "v2")
    assert main(["adapters", "--url", server, "load", "default-unc", "v2", "--default"]) == 0
    assert '"default": "default-unc@v2"' in capsys.readouterr().out
    assert main(["adapters", "--url", server, "unload", "default-unc@v1"]) == 0
    capsys.readouterr()
    assert main(["adapters", "--url", server, "list"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {(a["name"], a["version"]) for a in listing["adapters"]} == {
        ("default-unc", "v2"),
        ("other", "v1"),
    }


def test_cli_reports_refusals_and_exits_non_zero(server, capsys, monkeypatch):
    monkeypatch.delenv("CONFIDENCE_ADMIN_TOKEN", raising=False)
    assert main(["adapters", "--url", server, "default", "other"]) == 1
    assert "HTTP 401" in capsys.readouterr().err
    assert main(["adapters", "--url", server, "--token", TOKEN, "unload", "default-unc@v1"]) == 1
    assert "HTTP 409" in capsys.readouterr().err


def test_cli_says_when_the_server_is_unreachable(capsys):
    assert main(["adapters", "--url", "http://127.0.0.1:9", "--timeout", "2", "list"]) == 1
    assert "cannot reach" in capsys.readouterr().err
