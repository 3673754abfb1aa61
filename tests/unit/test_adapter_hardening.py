"""Adapter hardening: manifests that would fail every request are refused at start-up,
symbolic links in the adapter root are refused, the public listing gives reasons without
paths or file contents, an unload past its drain timeout aborts the requests still holding
the adapter with a 503 before files go, and an over-limit /score batch is a 400, not a 429."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.app import build_app
from tests.fake_engine import FakeEngine
from tests.http_server import serve_in_thread
from tests.unit.conftest import wait_ready, write_adapter

TOKEN = "hardening-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def patch_manifest(path: Path, **fields) -> None:
    manifest = json.loads((path / "manifest.json").read_text())
    manifest.update(fields)
    (path / "manifest.json").write_text(json.dumps(manifest).replace('"__INF__"', "1e999"))


def listing(settings, engine, adapter_root: Path) -> tuple[dict, dict]:
    settings = settings.model_copy(update={"adapter_root": adapter_root, "admin_token": SecretStr(TOKEN)})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        return client.get("/adapters").json(), client.get("/admin/adapters", headers=AUTH).json()


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"temperature": "__INF__"}, "invalid manifest"),
        ({"temperature": 0.0}, "invalid manifest"),
        ({"temperature": 1e6}, "invalid manifest"),
        (
            {"reference_histogram": {"bin_edges": [0.0, 0.6, 0.5, 1.0], "counts": [1, 2, 3]}},
            "invalid manifest",
        ),
        ({"reference_histogram": {"bin_edges": [0.0, 0.5, 1.0], "counts": [1]}}, "invalid manifest"),
        ({"reference_histogram": {"bin_edges": [0.0, 0.5, 1.0], "counts": [0, 0]}}, "invalid manifest"),
    ],
)
def test_unusable_manifests_are_refused_and_reported_without_details(
    settings, engine, adapter_root, fields, reason
):
    bad = write_adapter(adapter_root, "bad", "v1")
    patch_manifest(bad, **fields)
    public, admin = listing(settings, engine, adapter_root)
    assert "bad" not in {a["name"] for a in public["adapters"]}
    assert public["rejected"] == {"bad": reason}
    assert str(adapter_root) not in json.dumps(public)
    assert "manifest" in admin["rejected"]["bad"] and admin["rejected"]["bad"] != reason


def test_symbolic_links_in_the_adapter_root_are_refused(settings, engine, adapter_root, tmp_path):
    outside = write_adapter(tmp_path / "elsewhere", "linked", "v1")
    (adapter_root / "linked").symlink_to(outside.parent, target_is_directory=True)
    inner = write_adapter(adapter_root, "inner", "v1")
    secret = tmp_path / "secret.json"
    secret.write_text((inner / "adapter_config.json").read_text())
    (inner / "adapter_config.json").unlink()
    (inner / "adapter_config.json").symlink_to(secret)
    public, admin = listing(settings, engine, adapter_root)
    served = {a["name"] for a in public["adapters"]}
    assert "linked" not in served and "inner" not in served
    assert (
        public["rejected"]["linked"]
        == public["rejected"]["inner"]
        == "symbolic link in the adapter directory"
    )
    assert "symbolic link" in admin["rejected"]["inner"]


def test_an_over_limit_score_batch_is_a_400_even_when_it_exceeds_admission(settings, engine):
    settings = settings.model_copy(update={"max_inflight_sequences": 4, "max_score_items": 2})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        response = client.post("/score", json={"items": [{"question": "q?", "answer": "a"}] * 5})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "items"


def test_unload_past_the_drain_timeout_aborts_holders_with_a_503_before_removing_files(settings):
    engine = FakeEngine()
    settings = settings.model_copy(update={"admin_token": SecretStr(TOKEN), "adapter_drain_timeout_s": 0.3})
    app = build_app(settings, engine=engine)
    with serve_in_thread(app) as url:
        engine.latency_s = 20.0  # the request would hold the adapter far past the drain timeout
        result: dict[str, httpx.Response] = {}

        def slow_request() -> None:
            result["r"] = httpx.post(
                f"{url}/score",
                json={"items": [{"question": "q?", "answer": "a"}], "adapter": "other"},
                timeout=30,
            )

        requester = threading.Thread(target=slow_request)
        requester.start()
        deadline = time.monotonic() + 10
        while engine.in_flight == 0:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        start = time.monotonic()
        unloaded = httpx.delete(f"{url}/admin/adapters/other/v1", headers=AUTH, timeout=30)
        requester.join(30)
        took = time.monotonic() - start
    assert unloaded.status_code == 200, unloaded.text
    assert result["r"].status_code == 503, result["r"].text
    assert result["r"].json()["error"]["type"] == "adapter_unavailable"
    assert engine.cancelled >= 1  # its engine work was aborted, not left running
    assert took < 5.0


def test_an_admin_load_finishes_when_the_admin_client_leaves(settings, adapter_root):
    engine = FakeEngine()
    settings = settings.model_copy(update={"admin_token": SecretStr(TOKEN)})
    app = build_app(settings, engine=engine)
    with serve_in_thread(app) as url:
        write_adapter(adapter_root, "other", "v2")
        engine.latency_s = 1.0  # the load's warm-up read takes a while
        with pytest.raises(httpx.ReadTimeout):  # the admin client gives up and disconnects
            httpx.post(
                f"{url}/admin/adapters", json={"name": "other", "version": "v2"}, headers=AUTH, timeout=0.3
            )
        deadline = time.monotonic() + 10
        while "other@v2" not in {
            f"{a['name']}@{a['version']}" for a in httpx.get(f"{url}/adapters").json()["adapters"]
        }:
            assert time.monotonic() < deadline, "the load was abandoned with the client"
            time.sleep(0.05)
        assert any(lora.path.name == "v2" for lora in engine.loras.values())
