"""From score to decision on the real vLLM engine (tiny model, real HTTP on loopback).

A stream of labelled /score responses whose truth follows a sharper temperature than the served
one; `confidence recalibrate --promote` writes a version sharing the LoRA files with a refit
temperature, promotes it under concurrent load with no failed request (its confidences are the
same gaps under the new temperature), the old version then scores as its shadow, and a rollback
restores the old default.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
from pathlib import Path

import httpx
import pytest

from adapters import recalibrate as rc
from service.app import build_app
from tests.http_server import serve_in_thread
from tests.integration.conftest import make_random_lora, tiny_settings, write_manifest

pytestmark = pytest.mark.integration

TOKEN = "decisions-admin"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
# The held-out side is chosen by a hash of the (random) response ids, so each run compares
# different items: the truth is made sharp enough, and the labels many enough, that the
# refit's ECE gain clears its bootstrap CI on any split (half the labels held out), not just on a
# lucky one.
SERVED_T, TRUE_T = 1.5, 0.2
ROUNDS = 80
ITEMS_PER_REQUEST = 32


def uniform(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def truth(confidence: float) -> float:
    confidence = min(max(confidence, 1e-9), 1 - 1e-9)
    gap = SERVED_T * math.log(confidence / (1 - confidence))
    return 1 / (1 + math.exp(-gap / TRUE_T))


@pytest.fixture(scope="module")
def root(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("decisions") / "adapters"
    out = make_random_lora(tiny_model, root / "unc" / "v1", seed=7, scale=2.0)
    write_manifest(out, tiny_model, "unc", "v1", temperature=SERVED_T)
    return root


async def load(url: str, stop: asyncio.Event, codes: list[int]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        i = 0
        while not stop.is_set():
            body = {"items": [{"question": f"Load question {i}?", "answer": "yes"}]}
            codes.append((await client.post("/score", json=body)).status_code)
            i += 1


def test_recalibrate_promote_shadow_and_rollback_on_the_real_engine(tiny_model, root, monkeypatch, capsys):
    settings = tiny_settings(tiny_model, root, default_adapter="unc", admin_token=TOKEN, max_score_items=64)
    monkeypatch.setenv("CONFIDENCE_FEEDBACK_DB_PATH", str(settings.feedback_db_path))
    with (
        serve_in_thread(build_app(settings), ready_timeout=600) as url,
        httpx.Client(base_url=url, timeout=300) as c,
    ):
        for r in range(ROUNDS):  # ROUNDS x 32 labelled items
            items = [
                {"question": f"Question {r}-{i}: is {i} prime?", "answer": str(i % 2 == 0)} for i in range(32)
            ]
            body = c.post("/score", json={"items": items}).json()
            labels = [
                {
                    "id": body["id"],
                    "index": it["index"],
                    "correct": uniform(f"{r}:{it['index']}") < truth(it["confidence"]),
                }
                for it in body["items"]
            ]
            for start in range(0, len(labels), 256):
                assert c.post("/feedback", json={"items": labels[start : start + 256]}).status_code == 200

        async def promote_under_load() -> list[int]:
            stop, codes = asyncio.Event(), []
            clients = [asyncio.create_task(load(url, stop, codes)) for _ in range(8)]
            while len(codes) < 16:
                await asyncio.sleep(0.01)
            argv = [
                "--adapter",
                "unc@v1",
                "--window",
                "1d",
                "--promote",
                "--url",
                url,
                "--adapter-root",
                str(root),
                "--holdout",
                "0.5",
            ]
            assert await asyncio.to_thread(rc.main, argv) == 0
            before = len(codes)
            while len(codes) < before + 16:
                await asyncio.sleep(0.01)
            stop.set()
            await asyncio.gather(*clients)
            return codes

        monkeypatch.setenv("CONFIDENCE_ADMIN_TOKEN", TOKEN)
        codes = asyncio.run(promote_under_load())
        out = capsys.readouterr().out  # vLLM logs to stdout too: the summary is the last JSON
        summary = json.loads(out[out.rindex('{\n  "current"') :])
        assert summary["outcome"] == "promoted", summary
        assert summary["heldout"]["difference"]["ece"]["ci_high"] < 0
        assert set(codes) == {200}, sorted(set(codes))
        assert c.get("/adapters").json()["default"] == "unc@v1-recal1"

        # The same gaps under the refit temperature: the served confidence changes accordingly.
        item = {"items": [{"question": "Question 0-3: is 3 prime?", "answer": "False"}]}
        new = c.post("/score", json=item).json()["items"][0]["confidence"]
        old = c.post("/score", json={**item, "adapter": "unc@v1"}).json()["items"][0]["confidence"]
        refit_t = json.loads((root / "unc" / "v1-recal1" / "manifest.json").read_text())["temperature"]
        gap = SERVED_T * math.log(old / (1 - old))
        assert new == pytest.approx(1 / (1 + math.exp(-gap / refit_t)), abs=1e-3)

        # The old version as shadow of the new default: every request scored by both, none failed.
        attached = c.put("/admin/shadow", json={"adapter": "unc@v1", "fraction": 1.0}, headers=AUTH)
        assert attached.status_code == 200, attached.text
        scored = [c.post("/score", json={"items": [{"question": f"S{i}?", "answer": "x"}]}) for i in range(8)]
        assert all(s.status_code == 200 and s.json()["adapter"]["version"] == "v1-recal1" for s in scored)
        for s in scored:
            c.post("/feedback", json={"id": s.json()["id"], "index": 0, "correct": True})
        report = c.get("/calibration", params={"window": "1h", "version": "v1-recal1"}).json()
        assert [(s["candidate"], s["n"]) for s in report["shadow"]] == [("unc@v1", 8)]

        from service.cli import main as cli

        assert cli(["adapters", "--url", url, "rollback", "unc"]) == 0
        assert c.get("/adapters").json()["default"] == "unc@v1"
