"""Adapter hot-swap under load on the real vLLM engine (tiny model, real HTTP on loopback).

16 clients call /generate and /score without pause while version 2 of the default
adapter is loaded, made the default, and version 1 is unloaded. No request may fail,
every response must name v1 or v2, requests started after the switch must get v2, and
the confidences after the switch must equal those of a fresh server that only ever
served v2. Then bad adapters are refused while v2 keeps serving.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from service.app import build_app
from service.lora.manifest import AdapterManifest
from service.settings import Settings
from tests.http_server import serve_in_thread
from tests.integration.conftest import make_random_lora, tiny_settings, write_manifest

pytestmark = pytest.mark.integration

TOKEN = "hot-swap-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CLIENTS = 16
ITEMS = [
    {"question": "What is 2 + 2?", "answer": "4"},
    {"question": "Capital of Peru?", "answer": "Lima"},
    {"question": "Who wrote Hamlet?", "answer": "Charles Dickens"},
]
PROMPTS = ["Name a prime number.", "What colour is the sky?", "Count to three."]


@dataclass
class Outcome:
    endpoint: str
    status: int
    version: str | None
    started: float


def settings_for(model: Path, root: Path) -> Settings:
    return tiny_settings(model, root, default_adapter="unc", admin_token=TOKEN, default_max_tokens=4)


def add_version(model: Path, root: Path, version: str, seed: int) -> Path:
    out = make_random_lora(model, root / "unc" / version, seed=seed)
    write_manifest(out, model, "unc", version, temperature=1.3)
    return out


async def client_loop(url: str, stop: asyncio.Event, outcomes: list[Outcome], n: int) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        i = n
        while not stop.is_set():
            started = time.monotonic()
            if i % 2:
                response = await client.post("/score", json={"items": ITEMS})
            else:
                response = await client.post("/generate", json={"prompt": PROMPTS[i % len(PROMPTS)]})
            adapter = response.json().get("adapter") if response.status_code == 200 else None
            endpoint = "score" if i % 2 else "generate"
            outcomes.append(Outcome(endpoint, response.status_code, adapter and adapter["version"], started))
            i += 1


async def fixed_reads(url: str) -> list[float]:
    """Confidences of fixed /score items and greedy /generate answers, one at a time."""
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        scored = (await client.post("/score", json={"items": ITEMS})).json()
        generated = [(await client.post("/generate", json={"prompt": p})).json() for p in PROMPTS]
    assert scored["adapter"]["version"] == "v2"
    return [i["confidence"] for i in scored["items"]] + [g["confidence"] for g in generated]


async def swap_under_load(url: str, model: Path, root: Path) -> tuple[list[Outcome], float, list[float]]:
    stop, outcomes = asyncio.Event(), list[Outcome]()
    tasks = [asyncio.create_task(client_loop(url, stop, outcomes, n)) for n in range(CLIENTS)]
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=300) as admin:
        await asyncio.sleep(2)
        await asyncio.to_thread(add_version, model, root, "v2", 7)
        loaded = await admin.post("/admin/adapters", json={"name": "unc", "version": "v2"})
        assert loaded.status_code == 201, loaded.text
        await asyncio.sleep(1)
        switched = await admin.put("/admin/adapters/default", json={"adapter": "unc@v2"})
        assert switched.status_code == 200, switched.text
        switched_at = time.monotonic()
        await asyncio.sleep(1)
        unloaded = await admin.delete("/admin/adapters/unc/v1")
        assert unloaded.status_code == 200, unloaded.text
        await asyncio.sleep(2)
    stop.set()
    await asyncio.gather(*tasks)
    return outcomes, switched_at, await fixed_reads(url)


def break_weights(model: Path, root: Path) -> None:
    path = add_version(model, root, "v3", 8)
    data = (path / "adapter_model.safetensors").read_bytes()
    (path / "adapter_model.safetensors").write_bytes(data[: len(data) // 3])


def other_base(model: Path, root: Path) -> None:
    path = add_version(model, root, "v4", 9)
    manifest = AdapterManifest.read(path)
    manifest.base_model.weights_sha256 = "f" * 64
    manifest.write(path)


async def refusals(url: str, model: Path, root: Path) -> list[tuple[int, str, str | None]]:
    """Each bad load's status and message, then which version served the next request."""
    results = []
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=300) as admin:
        for version, make in (("v3", break_weights), ("v4", other_base), ("../x", None)):
            if make is not None:
                await asyncio.to_thread(make, model, root)
            response = await admin.post("/admin/adapters", json={"name": "unc", "version": version})
            after = await admin.post("/score", json={"items": ITEMS[:1]})
            served = after.json()["adapter"]["version"] if after.status_code == 200 else None
            results.append((response.status_code, response.json()["error"]["message"], served))
    return results


def test_hot_swap_under_load_then_refusals(tiny_model: Path, adapter_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "adapters"
    (root / "unc").mkdir(parents=True)
    shutil.copytree(adapter_root / "alpha" / "v1", root / "unc" / "v1")
    write_manifest(root / "unc" / "v1", tiny_model, "unc", "v1", temperature=1.5)

    with serve_in_thread(build_app(settings_for(tiny_model, root)), ready_timeout=300) as url:
        outcomes, switched_at, swapped = asyncio.run(swap_under_load(url, tiny_model, root))
        refused = asyncio.run(refusals(url, tiny_model, root))

    assert len(outcomes) >= 4 * CLIENTS, len(outcomes)
    assert [o for o in outcomes if o.status != 200] == []
    assert {o.version for o in outcomes} == {"v1", "v2"}
    assert {o.version for o in outcomes if o.started > switched_at} == {"v2"}
    assert {o.endpoint for o in outcomes if o.started > switched_at} == {"generate", "score"}

    (corrupt, wrong_base, traversal) = refused
    assert corrupt[0] == 409 and "adapter_model.safetensors" in corrupt[1] and corrupt[2] == "v2"
    assert wrong_base[0] == 409 and "base model" in wrong_base[1] and wrong_base[2] == "v2"
    assert traversal[0] == 400 and "invalid" in traversal[1] and traversal[2] == "v2"

    fresh_root = tmp_path / "fresh"
    shutil.copytree(root / "unc" / "v2", fresh_root / "unc" / "v2")
    with serve_in_thread(build_app(settings_for(tiny_model, fresh_root)), ready_timeout=300) as url:
        fresh = asyncio.run(fixed_reads(url))
    assert swapped == pytest.approx(fresh, abs=1e-3)
