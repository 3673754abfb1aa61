"""Per-adapter rejection on warm-up failure: at start-up and on an admin load, a version whose
one real confidence read fails (or is not finite) is refused on its own — out of the engine,
its private copy deleted, listed as refused with a reason (public: no paths; admin: details) —
while the other versions serve. A refused *default* adapter stops start-up instead: the
service must not report ready when every request naming no adapter would be refused."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.app import build_app
from service.lora.files import nonfinite_tensors
from service.settings import Settings
from tests.fake_engine import FakeEngine
from tests.unit.conftest import wait_ready, write_adapter

TOKEN = "warm-up-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ITEM = {"items": [{"question": "Capital of Peru?", "answer": "Lima"}]}


@pytest.fixture
def admin_settings(settings: Settings, adapter_root: Path) -> Settings:
    # Start-up stages each name's newest version: default-unc@v1 (the default) and other@v2.
    # The fake engine breaks adapters by version, so each test can break one of them.
    write_adapter(adapter_root, "other", "v2")
    return settings.model_copy(update={"admin_token": SecretStr(TOKEN)})


def served_copies(client: TestClient) -> set[str]:
    """name@version of every private adapter copy the service still keeps on disk."""
    root = client.app.state.service_state.service.registry.snapshots.root
    return {f"{p.parent.name}@{p.name}" for p in root.glob("*/*/*")}


def engine_loras(engine: FakeEngine) -> set[str]:
    return {lora.name.split("#")[0] for lora in engine.loras.values()}


def wait_failed(client: TestClient, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    while (response := client.get("/health")).status_code != 503:
        assert time.monotonic() < deadline, response.json()
        time.sleep(0.01)
    return response.json()


@pytest.mark.parametrize(
    ("break_it", "reason", "detail", "resets"),
    [
        (lambda e: e.nan_read_versions.add("v2"), "no usable confidence", "must be finite", 1),
        (lambda e: e.bad_adapter_versions.add("v2"), "invalid adapter", "fake engine refuses", 0),
    ],
)
def test_an_adapter_failing_its_warm_up_is_refused_alone(
    admin_settings, engine, adapter_root, break_it, reason, detail, resets
):
    break_it(engine)
    with TestClient(build_app(admin_settings, engine=engine)) as client:
        wait_ready(client)
        public = client.get("/adapters").json()
        admin = client.get("/admin/adapters", headers=AUTH).json()
        assert [a["name"] for a in public["adapters"]] == ["default-unc"]
        assert public["rejected"] == {"other": reason}
        assert str(adapter_root) not in json.dumps(public)
        assert detail in admin["rejected"]["other"] and "other@v2" in admin["rejected"]["other"]
        # Out of the engine and off the disk; the default and zero-shot keep serving.
        assert engine_loras(engine) == {"default-unc@v1"}
        assert served_copies(client) == {"default-unc@v1"}
        # KV cached while a read went non-finite is never reused (an adapter the engine
        # refused to load never ran).
        assert engine.prefix_cache_resets == resets
        assert client.post("/score", json=ITEM).json()["adapter"]["name"] == "default-unc"
        assert client.post("/score", json={**ITEM, "method": "zero_shot"}).status_code == 200
        refused = client.post("/score", json={**ITEM, "adapter": "other"})
        assert refused.status_code == 404 and reason in refused.json()["error"]["message"]


def break_default_read(engine: FakeEngine, root: Path) -> None:
    engine.nan_read_versions.add("v1")


def break_default_manifest(engine: FakeEngine, root: Path) -> None:
    manifest = root / "default-unc" / "v1" / "manifest.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "template_version": "old"}))


@pytest.mark.parametrize(
    ("break_it", "reason"),
    [(break_default_read, "no usable confidence"), (break_default_manifest, "query template")],
)
def test_a_refused_default_stops_start_up_with_a_clear_error(
    admin_settings, engine, adapter_root, break_it, reason
):
    break_it(engine, adapter_root)
    fatal = threading.Event()
    with TestClient(build_app(admin_settings, engine=engine, on_fatal=fatal.set)) as client:
        health = wait_failed(client)
        ready = client.get("/ready")
        generate = client.post("/generate", json={"prompt": "x", "method": "zero_shot"})
    assert fatal.is_set()
    assert health["status"] == "dead" and ready.status_code == 503
    assert "default adapter 'default-unc' was refused" in health["detail"]
    assert reason in health["detail"] and "CONFIDENCE_DEFAULT_ADAPTER" in health["detail"]
    assert str(adapter_root) not in health["detail"]
    assert generate.status_code == 503


def test_no_default_configured_still_starts_when_every_adapter_is_refused(admin_settings, engine):
    engine.nan_read_versions.update({"v1", "v2"})
    settings = admin_settings.model_copy(update={"default_adapter": None})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        assert client.get("/adapters").json()["rejected"] == {
            "default-unc": "no usable confidence",
            "other": "no usable confidence",
        }


def test_an_admin_load_failing_its_warm_up_is_listed_and_the_others_keep_serving(
    admin_settings, engine, adapter_root
):
    with TestClient(build_app(admin_settings, engine=engine)) as client:
        wait_ready(client)
        write_adapter(adapter_root, "other", "v3")
        engine.nan_read_versions.add("v3")
        response = client.post("/admin/adapters", json={"name": "other", "version": "v3"}, headers=AUTH)
        assert response.status_code == 409, response.text
        assert response.json()["error"]["type"] == "adapter_invalid"
        public = client.get("/adapters").json()
        admin = client.get("/admin/adapters", headers=AUTH).json()
        # Other versions of the name serve: the refusal is listed under the version.
        assert public["rejected"] == {"other@v3": "no usable confidence"}
        assert "cannot give a confidence" in admin["rejected"]["other@v3"]
        assert {(a["name"], a["version"]) for a in public["adapters"]} == {
            ("default-unc", "v1"),
            ("other", "v2"),
        }
        assert engine_loras(engine) == {"default-unc@v1", "other@v2"}
        assert served_copies(client) == {"default-unc@v1", "other@v2"}
        assert engine.prefix_cache_resets == 1
        assert client.post("/score", json={**ITEM, "adapter": "other"}).status_code == 200
        # Fixed and loaded again: no longer listed as refused.
        engine.nan_read_versions.clear()
        loaded = client.post("/admin/adapters", json={"name": "other", "version": "v3"}, headers=AUTH)
        assert loaded.status_code == 201, loaded.text
        assert loaded.json()["rejected"] == {}


def write_safetensors(path: Path, tensors: dict[str, tuple[str, bytes]]) -> None:
    """A safetensors file by hand (numpy cannot write bfloat16): name -> (dtype, raw bytes)."""
    header, offset = {}, 0
    for name, (dtype, raw) in tensors.items():
        width = 2 if dtype in ("BF16", "F16") else 4
        header[name] = {
            "dtype": dtype,
            "shape": [len(raw) // width],
            "data_offsets": [offset, offset + len(raw)],
        }
        offset += len(raw)
    encoded = json.dumps(header).encode()
    path.write_bytes(
        len(encoded).to_bytes(8, "little") + encoded + b"".join(raw for _, raw in tensors.values())
    )


BF16_ONE, BF16_NAN, BF16_INF = b"\x80\x3f", b"\xc0\x7f", b"\x80\x7f"


@pytest.mark.parametrize(
    ("dtype", "bad"),
    [
        ("F32", np.float32(np.nan).tobytes()),
        ("F32", np.float32(-np.inf).tobytes()),
        ("BF16", BF16_NAN),
        ("BF16", BF16_INF),
    ],
)
def test_non_finite_lora_weights_are_refused_before_they_reach_the_engine(
    settings, engine, adapter_root, dtype, bad
):
    good = np.float32(1.0).tobytes() if dtype == "F32" else BF16_ONE
    path = write_adapter(adapter_root, "other", "v2")
    prefix = "base_model.model.model.layers.0.self_attn.q_proj"
    write_safetensors(
        path / "adapter_model.safetensors",
        {f"{prefix}.lora_A.weight": (dtype, good * 4), f"{prefix}.lora_B.weight": (dtype, good * 3 + bad)},
    )
    assert nonfinite_tensors(path) == [f"{prefix}.lora_B.weight"]
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        assert client.get("/adapters").json()["rejected"] == {"other": "non-finite weights"}
    assert "other@v2" not in {call[1].name.split("#")[0] for call in engine.calls if call[1] is not None}


def test_finite_weights_in_every_float_dtype_pass(tmp_path):
    path = tmp_path / "a"
    path.mkdir()
    write_safetensors(
        path / "adapter_model.safetensors",
        {"x.lora_A.weight": ("BF16", BF16_ONE * 2), "x.lora_B.weight": ("F32", np.float32(3e38).tobytes())},
    )
    assert nonfinite_tensors(path) == []
