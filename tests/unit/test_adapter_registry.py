"""Runtime adapter registry: listing, admin auth, load / switch / unload, refusals (fake engine)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from service.calibration.query import LabelTokens
from service.errors import AdapterConflictError, InvalidRequestError
from service.lora.files import BaseModelInfo, parse_spec
from service.lora.ops import AdapterOps
from service.lora.registry import AdapterRegistry
from service.settings import Settings
from tests.fake_engine import FakeEngine
from tests.unit.conftest import wait_ready, write_adapter, write_lora_files

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ITEM = {"items": [{"question": "Capital of Peru?", "answer": "Lima"}]}


@pytest.fixture
def admin(settings: Settings, engine: FakeEngine) -> Iterator[TestClient]:
    settings = Settings.model_validate({**settings.model_dump(), "admin_token": TOKEN})
    with TestClient(build_app(settings, engine=engine)) as test_client:
        wait_ready(test_client)
        yield test_client


def served(client: TestClient, **extra) -> tuple[str, float]:
    body = client.post("/score", json={**ITEM, **extra}).json()
    return f"{body['adapter']['name']}@{body['adapter']['version']}", body["items"][0]["confidence"]


def test_listing_shows_versions_default_and_manifest_metrics(client, adapter_root):
    listing = client.get("/adapters").json()
    assert listing["default"] == "default-unc@v1"
    by_name = {a["name"]: a for a in listing["adapters"]}
    assert by_name["default-unc"]["default"] and by_name["default-unc"]["current"]
    assert not by_name["other"]["default"] and by_name["other"]["temperature"] == 1.0
    client.post("/score", json=ITEM)
    served_after = {a["name"]: a["requests_served"] for a in client.get("/adapters").json()["adapters"]}
    assert served_after == {"default-unc": 1, "other": 0}


def test_admin_api_is_off_without_a_token(client):
    response = client.post("/admin/adapters", json={"name": "other", "version": "v2"}, headers=AUTH)
    assert response.status_code == 403
    assert "CONFIDENCE_ADMIN_TOKEN" in response.json()["error"]["message"]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}])
def test_admin_api_needs_the_bearer_token(admin, headers):
    response = admin.put("/admin/adapters/default", json={"adapter": "other"}, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert admin.get("/adapters").json()["default"] == "default-unc@v1"


def test_load_switch_unload_cycle(admin, adapter_root, engine):
    _, v1_confidence = served(admin)
    write_adapter(adapter_root, "default-unc", "v2", temperature=2.0)
    loaded = admin.post("/admin/adapters", json={"name": "default-unc", "version": "v2"}, headers=AUTH)
    assert loaded.status_code == 201, loaded.text
    # Loaded and warmed up, but requests naming nothing still get v1 until the switch.
    assert served(admin) == ("default-unc@v1", v1_confidence)
    assert served(admin, adapter="default-unc@v2")[0] == "default-unc@v2"

    switched = admin.put("/admin/adapters/default", json={"adapter": "default-unc@v2"}, headers=AUTH)
    assert switched.json()["default"] == "default-unc@v2"
    spec, v2_confidence = served(admin)
    assert spec == "default-unc@v2" and v2_confidence != pytest.approx(v1_confidence)
    assert served(admin, adapter="default-unc")[0] == "default-unc@v2"

    removed = admin.delete("/admin/adapters/default-unc/v1", headers=AUTH)
    assert removed.status_code == 200, removed.text
    assert {a["version"] for a in removed.json()["adapters"] if a["name"] == "default-unc"} == {"v2"}
    assert admin.post("/score", json={**ITEM, "adapter": "default-unc@v1"}).status_code == 404
    # The engine freed v1's LoRA; v2's is resident (and other@v1's, loaded at start-up).
    assert sorted(lora.name.split("#")[0] for lora in engine.loras.values()) == ["default-unc@v2", "other@v1"]


def test_unloading_the_default_is_refused(admin):
    response = admin.delete("/admin/adapters/default-unc/v1", headers=AUTH)
    assert response.status_code == 409
    assert "default" in response.json()["error"]["message"]
    assert served(admin)[0] == "default-unc@v1"


def corrupt_manifest(root: Path) -> None:
    path = write_adapter(root, "default-unc", "v2")
    (path / "manifest.json").write_text("{not json")


def wrong_labels(root: Path) -> None:
    write_adapter(root, "default-unc", "v2", label_token_ids={"no": 7, "yes": 9})


def too_high_rank(root: Path) -> None:
    write_adapter(root, "default-unc", "v2", rank=64)


def embedding_tensors(root: Path) -> None:
    path = write_adapter(root, "default-unc", "v2")
    write_lora_files(path, extra_tensors=("base_model.model.model.embed_tokens.weight",))


def truncated_weights(root: Path) -> None:
    path = write_adapter(root, "default-unc", "v2")
    data = (path / "adapter_model.safetensors").read_bytes()
    (path / "adapter_model.safetensors").write_bytes(data[: len(data) // 2])


def missing_config(root: Path) -> None:
    path = write_adapter(root, "default-unc", "v2")
    (path / "adapter_config.json").unlink()


def other_template(root: Path) -> None:
    write_adapter(root, "default-unc", "v2", template_version="someone-elses-v0")


@pytest.mark.parametrize(
    ("make", "fragment"),
    [
        (corrupt_manifest, "unreadable manifest"),
        (wrong_labels, "label tokens"),
        (too_high_rank, "rank 64"),
        (embedding_tensors, "embedding"),
        (truncated_weights, "adapter_model.safetensors"),
        (missing_config, "adapter_config.json"),
        (other_template, "query template"),
    ],
)
def test_bad_adapters_are_refused_and_the_default_keeps_serving(admin, adapter_root, make, fragment):
    before = served(admin)
    make(adapter_root)
    response = admin.post(
        "/admin/adapters", json={"name": "default-unc", "version": "v2", "make_default": True}, headers=AUTH
    )
    assert response.status_code == 409, response.text
    assert fragment in response.json()["error"]["message"]
    assert served(admin) == before
    assert {a["version"] for a in admin.get("/adapters").json()["adapters"]} == {"v1"}


def test_engine_refusal_or_failed_warm_up_leaves_nothing_loaded(admin, adapter_root, engine):
    write_adapter(adapter_root, "default-unc", "v2")
    engine.bad_adapter_versions.add("v2")
    response = admin.post("/admin/adapters", json={"name": "default-unc", "version": "v2"}, headers=AUTH)
    assert response.status_code == 409
    assert served(admin)[0] == "default-unc@v1"
    assert all(not lora.name.startswith("default-unc@v2") for lora in engine.loras.values())


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        ({"name": "../x", "version": "v1"}, 400),
        ({"name": "other", "version": "../../etc"}, 400),
        ({"name": "Other", "version": "v1"}, 400),
        ({"name": "other", "version": "v9"}, 404),
        ({"name": "other", "version": "v1"}, 409),  # already loaded
    ],
)
def test_load_refuses_bad_names_missing_and_duplicate_versions(admin, payload, status):
    response = admin.post("/admin/adapters", json=payload, headers=AUTH)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]


def test_request_with_a_path_like_adapter_name_is_a_400(client):
    response = client.post("/score", json={**ITEM, "adapter": "../x"})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "adapter"


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [("a", ("a", None)), ("a@v2", ("a", "v2")), ("my.adapter-1@2024.1", ("my.adapter-1", "2024.1"))],
)
def test_parse_spec(spec, parsed):
    assert parse_spec(spec) == parsed


@pytest.mark.parametrize("spec", ["", "@v1", "a@", "a/b", "a@v1/..", ".hidden", "a@b@c"])
def test_parse_spec_rejects(spec):
    with pytest.raises(InvalidRequestError):
        parse_spec(spec)


def registry(root: Path) -> AdapterRegistry:
    reg = AdapterRegistry(root, BaseModelInfo(None, LabelTokens(1, 2), 16), default="default-unc")
    reg.scan()
    return reg


async def test_in_flight_request_keeps_its_version_and_unload_waits_for_it(adapter_root):
    write_adapter(adapter_root, "default-unc", "v2")
    reg = registry(adapter_root)  # scan stages the newest version of each name: v2
    reg.add(reg.prepare("default-unc", "v1"))
    engine = FakeEngine()
    ops = AdapterOps(engine, reg, drain_timeout_s=5)
    with reg.lease("default-unc@v2") as held:
        await ops.set_default("default-unc@v1")
        assert held.version == "v2" and reg.resolve(None).version == "v1"
        unload = asyncio.create_task(ops.unload("default-unc@v2"))
        await asyncio.sleep(0.05)
        assert not unload.done()  # waits for the request holding v2
        with pytest.raises(Exception, match="not loaded"):
            reg.resolve("default-unc@v2")  # but no new request gets it
    removed = await asyncio.wait_for(unload, 1)
    assert removed is held and removed.retired and removed.in_flight == 0


def test_each_loaded_version_gets_its_own_engine_identity(adapter_root):
    write_adapter(adapter_root, "default-unc", "v2")
    reg = registry(adapter_root)
    reg.add(reg.prepare("default-unc", "v1"))
    loras = [a.lora for a in reg.list()]
    assert len({lora.name for lora in loras}) == len({lora.int_id for lora in loras}) == len(loras) == 3
    with pytest.raises(AdapterConflictError):
        reg.add(reg.prepare("default-unc", "v1"))


def test_scan_keeps_the_reason_an_adapter_was_refused(adapter_root):
    write_adapter(adapter_root, "stale", "v1", template_version="old")
    reg = registry(adapter_root)
    assert "query template" in reg.rejected["stale"]
    assert json.dumps(reg.rejected)  # reported by GET /adapters as plain strings
