"""GET /feedback/queue: unlabelled served answers ranked by how much their labels would teach."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.app import build_app
from service.decisions import queue
from service.feedback.store import Outcome
from service.lora.manifest import ReferenceHistogram
from service.settings import Settings
from tests.unit.conftest import wait_ready

TOKEN = "queue-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def outcome(rid: str, confidence: float, correct: bool | None = None) -> Outcome:
    return Outcome(rid, 0, "generate", "adapter", "a", "v1", confidence, 0.0, None, None, correct, None)


def test_near_threshold_scarce_and_drifted_items_come_first():
    labelled = [outcome(f"l{i}", 0.95, True) for i in range(50)]  # bin 0.9 is well labelled
    unlabelled = [outcome("near", 0.61), outcome("far-labelled-bin", 0.96), outcome("far-scarce-bin", 0.05)]
    ranked = queue.rank(unlabelled, labelled, thresholds=[0.6], reference=None, limit=10)
    assert [item.id for item in ranked] == ["near", "far-scarce-bin", "far-labelled-bin"]
    assert any("decision threshold" in why for why in ranked[0].reasons)
    assert ranked[1].reasons == ["0 labels in its confidence bin"]


def test_drifted_bins_rank_above_equally_scarce_ones():
    reference = ReferenceHistogram(bin_edges=[k / 10 for k in range(11)], counts=[100] * 5 + [0] * 5)
    # Live traffic piles into 0.7-0.8, where the reference had nothing.
    unlabelled = [outcome(f"d{i}", 0.75) for i in range(20)] + [outcome("calm", 0.25)]
    ranked = queue.rank(unlabelled, [], thresholds=[0.5], reference=reference, limit=21)
    assert ranked[-1].id == "calm"
    assert any("drifted bin" in why for why in ranked[0].reasons)


def test_queue_route_lists_only_unlabelled_responses(settings, engine):
    settings = Settings.model_validate(
        {**settings.model_dump(), "admin_token": TOKEN, "feedback_store_prompts": True}
    )
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        served = [client.post("/generate", json={"prompt": f"question {i}?"}).json() for i in range(12)]
        client.post("/feedback", json={"id": served[0]["id"], "correct": True})
        assert client.get("/feedback/queue").status_code == 401
        body = client.get("/feedback/queue", params={"threshold": 0.6, "limit": 5}, headers=AUTH).json()
    assert body["adapter"] == "default-unc" and body["version"] == "v1" and body["thresholds"] == [0.6]
    assert body["candidates"] == 11 and len(body["items"]) == 5
    ids = [item["id"] for item in body["items"]]
    assert served[0]["id"] not in ids
    nearest = min((r for r in served[1:]), key=lambda r: abs(r["confidence"] - 0.6))
    assert ids[0] == nearest["id"]
    assert body["items"][0]["question"] == [
        {
            "role": "user",
            "content": next(f"question {i}?" for i, r in enumerate(served) if r["id"] == nearest["id"]),
        }
    ]
    priorities = [item["priority"] for item in body["items"]]
    assert priorities == sorted(priorities, reverse=True)
