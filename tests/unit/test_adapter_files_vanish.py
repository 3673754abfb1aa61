"""An adapter's directory deleted while it is served (fake engine).

The fake engine dies, as vLLM 0.32's engine core does, if it has to read a LoRA whose
files are gone; the service must serve from its own copy, and say clearly what failed
when an operation really needs the deleted files.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from service.errors import AdapterLoadError
from service.lora.snapshot import AdapterSnapshots
from service.settings import Settings
from tests.unit.conftest import wait_ready, write_adapter

TOKEN = "vanish-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ITEMS = {"items": [{"question": "Capital of Peru?", "answer": "Lima"}, {"question": "2+2?", "answer": "4"}]}


@pytest.fixture
def admin(settings: Settings, engine):
    settings = Settings.model_validate({**settings.model_dump(), "admin_token": TOKEN})
    app = build_app(settings, engine=engine)
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def confidences(client: TestClient, **extra) -> list[float]:
    response = client.post("/score", json={**ITEMS, **extra})
    assert response.status_code == 200, response.text
    return [i["confidence"] for i in response.json()["items"]]


def test_deleted_adapter_directory_keeps_serving_the_loaded_weights(admin, adapter_root):
    before = confidences(admin), confidences(admin, adapter="other")
    generated = admin.post("/generate", json={"prompt": "What is 2 + 2?"}).json()
    shutil.rmtree(adapter_root)  # the whole adapter root, mid-flight
    assert (confidences(admin), confidences(admin, adapter="other")) == before
    again = admin.post("/generate", json={"prompt": "What is 2 + 2?"}).json()
    assert again["confidence"] == generated["confidence"]
    assert admin.get("/health").status_code == 200


def test_after_deletion_unload_works_and_reload_is_a_clear_404(admin, adapter_root):
    shutil.rmtree(adapter_root / "other")
    assert admin.delete("/admin/adapters/other/v1", headers=AUTH).status_code == 200
    response = admin.post("/admin/adapters", json={"name": "other", "version": "v1"}, headers=AUTH)
    assert response.status_code == 404 and "other@v1" in response.json()["error"]["message"]
    assert admin.get("/health").status_code == 200


def test_adapter_files_half_deleted_before_load_are_a_409(admin, adapter_root):
    write_adapter(adapter_root, "other", "v2")
    (adapter_root / "other" / "v2" / "adapter_model.safetensors").unlink()
    response = admin.post("/admin/adapters", json={"name": "other", "version": "v2"}, headers=AUTH)
    assert response.status_code == 409, response.text
    assert "adapter_model.safetensors" in response.json()["error"]["message"]
    assert confidences(admin, adapter="other")  # v1 still serves


def test_concurrent_requests_during_deletion_never_fail(admin, adapter_root, engine):
    engine.latency_s = 0.05

    async def burst() -> list[int]:
        import httpx

        transport = httpx.ASGITransport(app=admin.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            tasks = [asyncio.create_task(client.post("/score", json=ITEMS)) for _ in range(10)]
            await asyncio.sleep(0.02)
            shutil.rmtree(adapter_root)
            tasks += [asyncio.create_task(client.post("/score", json=ITEMS)) for _ in range(10)]
            return [(await t).status_code for t in tasks]

    assert asyncio.run(burst()) == [200] * 20


def test_snapshots_copy_served_files_and_drop_them(tmp_path: Path):
    source = write_adapter(tmp_path / "root", "unc", "v1")
    store = AdapterSnapshots(tmp_path)
    copy = store.take(source, uid=7)
    assert copy.relative_to(store.root).parts == ("7", "unc", "v1")
    assert sorted(p.name for p in copy.iterdir()) == sorted(p.name for p in source.iterdir())
    store.drop(copy)
    assert not (store.root / "7").exists()
    (source / "adapter_config.json").unlink()
    with pytest.raises(AdapterLoadError, match=r"adapter_config\.json"):
        store.take(source, uid=8)
    assert not (store.root / "8").exists()
    store.close()
    assert not store.root.exists()


def test_the_snapshots_are_removed_at_shutdown(settings, engine):
    app = build_app(settings, engine=engine)
    with TestClient(app) as client:
        wait_ready(client)
        registry = app.state.service_state.service.registry
        root = registry.snapshots.root
        assert all(a.lora.path.is_relative_to(root) for a in registry.list())
    assert not root.exists()
