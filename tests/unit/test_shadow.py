"""Shadow evaluation (fake engine): a candidate scores a fraction of the default's requests in the
same engine batch, is recorded under its own version and never returned; /calibration compares
both on the same labelled responses; promotion on shadow evidence only."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from service.engine.base import LoRA
from service.errors import AdapterUnavailableError
from service.settings import Settings
from tests.fake_engine import FakeEngine
from tests.unit.conftest import wait_ready, write_adapter

TOKEN = "shadow-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def uniform(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def make_client(settings: Settings, engine: FakeEngine, adapter_root) -> Iterator[TestClient]:
    # A candidate as `confidence recalibrate` writes it: start-up leaves it to the admin API.
    write_adapter(adapter_root, "default-unc", "v2", temperature=0.5, recalibration={"parent": "v1"})
    settings = Settings.model_validate({**settings.model_dump(), "admin_token": TOKEN})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        loaded = client.post("/admin/adapters", json={"name": "default-unc", "version": "v2"}, headers=AUTH)
        assert loaded.status_code == 201, loaded.text
        yield client


@pytest.fixture
def admin(settings, engine, adapter_root):
    yield from make_client(settings, engine, adapter_root)


def shadow_rows(settings: Settings) -> dict[tuple[str, int], float]:
    """The shadow table, once the background writes of every response have landed."""
    with sqlite3.connect(settings.feedback_db_path) as conn:
        rows = conn.execute(
            "SELECT response_id, item_index, adapter_version, confidence FROM confidence_shadow_outcomes"
        ).fetchall()
    assert {r[2] for r in rows} <= {"v2"}
    return {(r[0], r[1]): r[3] for r in rows}


def wait_for_shadow_rows(settings: Settings, n: int, timeout: float = 10.0) -> dict[tuple[str, int], float]:
    deadline = time.monotonic() + timeout
    while len(rows := shadow_rows(settings)) < n:
        assert time.monotonic() < deadline, f"{len(rows)} of {n} shadow rows after {timeout} s"
        time.sleep(0.01)
    return rows


def score_many(client: TestClient, n_requests: int) -> list[dict]:
    def one(r: int) -> dict:
        items = [{"question": f"shadow {r} {i}?", "answer": f"a {i}"} for i in range(4)]
        response = client.post("/score", json={"items": items})
        assert response.status_code == 200, response.text
        return response.json()

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n_requests)))


def test_attach_refuses_the_default_and_unpinned_versions(admin):
    assert (
        admin.put(
            "/admin/shadow", json={"adapter": "default-unc@v1", "fraction": 1.0}, headers=AUTH
        ).status_code
        == 409
    )
    assert (
        admin.put("/admin/shadow", json={"adapter": "default-unc", "fraction": 1.0}, headers=AUTH).status_code
        == 400
    )
    assert (
        admin.put("/admin/shadow", json={"adapter": "nope@v1", "fraction": 1.0}, headers=AUTH).status_code
        == 404
    )
    assert (
        admin.put(
            "/admin/shadow", json={"adapter": "default-unc@v2", "fraction": 0}, headers=AUTH
        ).status_code
        == 400
    )
    assert admin.get("/admin/shadow", headers=AUTH).json() == {
        "adapter": None,
        "fraction": None,
        "default": "default-unc@v1",
    }


def test_shadow_scores_are_recorded_never_returned_and_compared(admin, settings, engine):
    attached = admin.put("/admin/shadow", json={"adapter": "default-unc@v2", "fraction": 1.0}, headers=AUTH)
    assert attached.json() == {"adapter": "default-unc@v2", "fraction": 1.0, "default": "default-unc@v1"}
    engine.max_in_flight = 0
    generated = admin.post("/generate", json={"prompt": "2+2?"}).json()
    # The default's and the shadow's confidence reads were in the engine together (one batch).
    assert engine.max_in_flight >= 2
    assert set(generated) == {"id", "text", "confidence", "method", "adapter", "usage", "finish_reason"}
    assert generated["adapter"] == {"name": "default-unc", "version": "v1"}

    responses = score_many(admin, 40)  # concurrent clients: no failed request
    assert all(r["adapter"]["version"] == "v1" for r in responses)
    # Requests naming an adapter are not shadowed.
    admin.post("/score", json={"items": [{"question": "q?", "answer": "a"}], "adapter": "other"})
    rows = wait_for_shadow_rows(settings, 1 + 40 * 4)
    assert len(rows) == 1 + 40 * 4
    assert rows[(generated["id"], 0)] != pytest.approx(generated["confidence"])  # its own reading

    labels = [
        {
            "id": r["id"],
            "index": item["index"],
            "correct": uniform(f"{r['id']}:{item['index']}") < item["confidence"],
        }
        for r in responses
        for item in r["items"]
    ]
    for start in range(0, len(labels), 64):
        assert admin.post("/feedback", json={"items": labels[start : start + 64]}).status_code == 200
    report = admin.get("/calibration", params={"window": "1h"}).json()
    (comparison,) = report["shadow"]
    assert comparison["candidate"] == "default-unc@v2" and comparison["n"] == 160
    assert comparison["served"]["ece"] == pytest.approx(report["ece"])  # every labelled row was shadowed
    assert comparison["shadow"]["ece"] != pytest.approx(report["ece"])
    assert comparison["ece_difference"]["ci_low"] <= comparison["ece_difference"]["estimate"]
    # Its confidences were never served: v2 itself has no served rows of its own.
    v2 = admin.get("/calibration", params={"window": "1h", "version": "v2"}).json()
    assert v2["n"] == 0
    metrics = admin.app.state.monitor.metrics.registry
    ok = {"adapter": "default-unc", "version": "v2", "outcome": "ok"}
    assert metrics.get_sample_value("confidence_shadow_reads_total", ok) == 41  # 1 generate + 40 score


def test_promotion_needs_shadow_evidence(admin, settings):
    admin.put("/admin/shadow", json={"adapter": "default-unc@v2", "fraction": 1.0}, headers=AUTH)
    responses = score_many(admin, 60)
    rows = wait_for_shadow_rows(settings, 240)
    too_few = admin.post("/admin/shadow/promote", json={"min_labels": 100}, headers=AUTH)
    assert too_few.status_code == 409 and "0 labelled responses" in too_few.json()["error"]["message"]
    # The truth follows the shadow's confidences: the candidate is the calibrated one.
    labels = [
        {
            "id": r["id"],
            "index": i["index"],
            "correct": uniform(f"{r['id']}:{i['index']}") < rows[(r["id"], i["index"])],
        }
        for r in responses
        for i in r["items"]
    ]
    for start in range(0, len(labels), 64):
        assert admin.post("/feedback", json={"items": labels[start : start + 64]}).status_code == 200
    promoted = admin.post("/admin/shadow/promote", json={"min_labels": 100}, headers=AUTH)
    assert promoted.status_code == 200, promoted.text
    assert promoted.json()["ece_difference"]["ci_high"] < 0
    assert admin.get("/adapters").json()["default"] == "default-unc@v2"
    assert admin.get("/admin/shadow", headers=AUTH).json()["adapter"] is None


def test_promotion_refused_when_the_shadow_is_not_better(admin, settings):
    admin.put("/admin/shadow", json={"adapter": "default-unc@v2", "fraction": 1.0}, headers=AUTH)
    responses = score_many(admin, 60)
    wait_for_shadow_rows(settings, 240)
    labels = [  # the truth follows the served confidences
        {"id": r["id"], "index": i["index"], "correct": uniform(f"{r['id']}:{i['index']}") < i["confidence"]}
        for r in responses
        for i in r["items"]
    ]
    for start in range(0, len(labels), 64):
        admin.post("/feedback", json={"items": labels[start : start + 64]})
    refused = admin.post("/admin/shadow/promote", json={"min_labels": 100}, headers=AUTH)
    assert refused.status_code == 409 and "not better" in refused.json()["error"]["message"]
    assert admin.get("/adapters").json()["default"] == "default-unc@v1"


class ShadowFailingEngine(FakeEngine):
    async def next_token_logprobs(self, prompt_ids, token_ids, *, lora: LoRA | None = None):
        if lora is not None and "@v2#" in lora.name and self.fail_v2:
            raise AdapterUnavailableError("v2 is gone")
        return await super().next_token_logprobs(prompt_ids, token_ids, lora=lora)

    fail_v2 = False


def test_a_failing_shadow_never_fails_the_request(settings, adapter_root):
    engine = ShadowFailingEngine()
    for client in make_client(settings, engine, adapter_root):
        client.put("/admin/shadow", json={"adapter": "default-unc@v2", "fraction": 1.0}, headers=AUTH)
        engine.fail_v2 = True
        assert all(r["adapter"]["version"] == "v1" for r in score_many(client, 10))
        metrics = client.app.state.monitor.metrics.registry
        failed = {"adapter": "default-unc", "version": "v2", "outcome": "failed"}
        assert metrics.get_sample_value("confidence_shadow_reads_total", failed) == 10


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/shadow", {"adapter": "other@v1", "fraction": True}),
        ("/admin/recalibrations", {"adapter": "default-unc", "outcome": "better", "candidate_ece": False}),
    ],
)
def test_a_json_boolean_is_not_a_number_on_admin_routes(admin, path, body):
    method = admin.put if path == "/admin/shadow" else admin.post
    response = method(path, json=body, headers=AUTH)
    assert response.status_code == 400, response.text
