"""Selective answering on /generate and /score (fake engine): abstain_below, target_error_rate
from live labels or the version's calibration split, the 409 with the labels needed, and the
thresholds recomputed as labels arrive."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from service.calibration import risk
from tests.unit.conftest import wait_ready, write_adapter

TARGET, DELTA = 0.1, 0.1


def draw(key: str) -> float:
    """A reproducible uniform number per response item (the "truth" of the simulation)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") / 2**32


def score_and_label(
    client: TestClient, n_requests: int, *, truth=lambda c, u: u < (c - 0.3) * 2.5
) -> list[tuple[float, bool]]:
    """Score `n_requests` batches of 8 and label every item: correct when
    `truth(confidence, uniform)` (by default with probability 2.5 (c - 0.3): the fake
    engine's confidences, ~0.4-0.8, discriminate weakly). Returns (confidence, correct)."""
    labelled = []
    for r in range(n_requests):
        items = [{"question": f"q {r} {i}?", "answer": f"a {r} {i}"} for i in range(8)]
        body = client.post("/score", json={"items": items}).json()
        labels = []
        for item in body["items"]:
            correct = bool(truth(item["confidence"], draw(f"{body['id']}:{item['index']}")))
            labels.append({"id": body["id"], "index": item["index"], "correct": correct})
            labelled.append((item["confidence"], correct))
        assert client.post("/feedback", json={"items": labels}).status_code == 200
    return labelled


@pytest.fixture
def selective_client(settings, engine):
    settings = settings.model_copy(update={"selective_delta": DELTA, "selective_min_live_labels": 50})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        yield client


def test_without_the_fields_responses_are_unchanged(client):
    generated = client.post("/generate", json={"prompt": "2+2?"}).json()
    assert set(generated) == {"id", "text", "confidence", "method", "adapter", "usage", "finish_reason"}
    scored = client.post("/score", json={"items": [{"question": "q?", "answer": "a"}]}).json()
    assert set(scored) == {"id", "method", "adapter", "items"}
    assert set(scored["items"][0]) == {"index", "confidence"}


def test_abstain_below_decides_per_item(client):
    items = [{"question": f"question {i}?", "answer": f"answer {i}"} for i in range(8)]
    body = client.post("/score", json={"items": items, "abstain_below": 0.5}).json()
    decisions = {item["decision"] for item in body["items"]}
    assert decisions == {"answer", "abstain"}  # the fake engine's confidences straddle 0.5
    for item in body["items"]:
        assert item["decision"] == ("answer" if item["confidence"] >= 0.5 else "abstain")
    assert "selection" not in body
    generated = client.post("/generate", json={"prompt": "2+2?", "abstain_below": 0.0}).json()
    assert generated["decision"] == "answer" and generated["text"]


def test_both_rules_at_once_is_a_400(client):
    response = client.post("/generate", json={"prompt": "x", "abstain_below": 0.5, "target_error_rate": 0.1})
    assert response.status_code == 400
    assert "at most one" in response.json()["error"]["message"]


def test_target_without_labels_is_a_409_with_the_number_needed(selective_client, engine):
    calls = len(engine.calls)
    response = selective_client.post("/generate", json={"prompt": "2+2?", "target_error_rate": TARGET})
    assert response.status_code == 409, response.text
    error = response.json()["error"]
    assert error["type"] == "not_enough_labels" and error["param"] == "target_error_rate"
    assert error["labels"] == 0 and error["labels_needed"] == risk.scan_start(TARGET, DELTA)
    assert "no calibration split" in error["message"]
    assert len(engine.calls) == calls  # refused before any engine work


def test_target_from_live_labels_and_recomputed_as_they_arrive(selective_client):
    first = selective_client.post(
        "/score", json={"items": [{"question": "q?", "answer": "a"}], "target_error_rate": TARGET}
    )
    assert first.status_code == 409  # cached refusal ...
    labelled = score_and_label(selective_client, 40)
    items = [{"question": f"fresh {i}?", "answer": f"a {i}"} for i in range(8)]
    response = selective_client.post("/score", json={"items": items, "target_error_rate": TARGET})
    assert response.status_code == 200, response.text  # ... replaced once labels arrived
    body = response.json()
    selection = body["selection"]
    p = np.array([c for c, _ in labelled])
    y = np.array([float(ok) for _, ok in labelled])
    expected = risk.choose_threshold(p, y, target=TARGET, delta=DELTA)
    assert selection == {
        "threshold": expected.threshold,
        "source": "outcome_store",
        "target_error_rate": TARGET,
        "delta": DELTA,
        "expected_coverage": pytest.approx(expected.coverage),
        "n_labels": 320,
        "risk_upper_bound": pytest.approx(expected.risk_upper_bound),
    }
    assert 0.0 < selection["expected_coverage"] < 1.0
    for item in body["items"]:
        assert item["decision"] == ("answer" if item["confidence"] >= selection["threshold"] else "abstain")


def test_target_from_the_calibration_split_recorded_with_the_version(settings, engine, adapter_root):
    rng = np.random.default_rng(0)
    gaps = rng.normal(0.0, 3.0, size=600)
    correct = rng.uniform(size=600) < 1 / (1 + np.exp(-gaps / 1.5))
    write_adapter(
        adapter_root,
        "default-unc",
        "v2",
        temperature=1.5,
        calibration_outcomes={"split": "calibration", "gaps": gaps.tolist(), "correct": correct.tolist()},
    )
    settings = settings.model_copy(update={"selective_delta": DELTA})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        body = client.post("/generate", json={"prompt": "2+2?", "target_error_rate": TARGET}).json()
    assert body["adapter"] == {"name": "default-unc", "version": "v2"}
    p = 1 / (1 + np.exp(-gaps / 1.5))
    expected = risk.choose_threshold(p, correct.astype(float), target=TARGET, delta=DELTA)
    assert body["selection"]["source"] == "calibration_split"
    assert body["selection"]["threshold"] == expected.threshold
    assert body["selection"]["n_labels"] == 600
    assert body["decision"] == ("answer" if body["confidence"] >= expected.threshold else "abstain")


def test_decisions_are_counted_per_version_and_method(client):
    items = [{"question": f"question {i}?", "answer": f"answer {i}"} for i in range(8)]
    body = client.post("/score", json={"items": items, "abstain_below": 0.5}).json()
    metrics = client.app.state.monitor.metrics.registry
    abstained = sum(item["decision"] == "abstain" for item in body["items"])
    labels = {"adapter": "default-unc", "version": "v1", "method": "adapter"}
    assert (
        metrics.get_sample_value("confidence_decisions_total", {**labels, "decision": "abstain"}) == abstained
    )
    assert (
        metrics.get_sample_value("confidence_decisions_total", {**labels, "decision": "answer"})
        == 8 - abstained
    )


def test_openai_choices_carry_decisions_only_when_asked(client):
    chat = {
        "model": "fake-model",
        "messages": [{"role": "user", "content": "2+2?"}],
        "n": 4,
        "temperature": 1.0,
    }
    plain = client.post("/v1/chat/completions", json=chat).json()
    assert all(set(c["confidence"]) == {"value", "method", "adapter", "feedback"} for c in plain["choices"])
    decided = client.post("/v1/chat/completions", json={**chat, "abstain_below": 0.5}).json()
    for choice in decided["choices"]:
        confidence = choice["confidence"]
        assert confidence["decision"] == ("answer" if confidence["value"] >= 0.5 else "abstain")
    text = client.post(
        "/v1/completions", json={"model": "fake-model", "prompt": "2+2=", "abstain_below": 1.0}
    ).json()
    assert text["choices"][0]["confidence"]["decision"] == "abstain"
    streamed = client.post("/v1/chat/completions", json={**chat, "stream": True, "abstain_below": 0.5})
    assert streamed.status_code == 400
    assert streamed.json()["error"]["param"] == "abstain_below"


def test_openai_target_without_labels_is_a_409(selective_client):
    body = {"model": "fake-model", "prompt": "2+2=", "target_error_rate": TARGET}
    response = selective_client.post("/v1/completions", json=body)
    assert response.status_code == 409
    assert "labels" in response.json()["error"]["message"]


async def test_thresholds_follow_labels_stored_by_other_replicas_after_the_ttl(tmp_path):
    """Labels written by another replica never reach this one's listener: the cached
    refusal stands until the TTL, then the threshold is recomputed from the store."""
    from service.api.protocol import Method
    from service.decisions.thresholds import ThresholdBook
    from service.errors import NotEnoughLabelsError
    from service.feedback.store import Label, OutcomeStore, ServedItem, ServedResponse, sqlite_dialect

    store = OutcomeStore(sqlite_dialect(tmp_path / "shared.sqlite3"))
    now = [0.0]
    book = ThresholdBook(store, list, delta=DELTA, min_live_labels=1, ttl_s=60.0, clock=lambda: now[0])
    with pytest.raises(NotEnoughLabelsError):
        await book.selection("a", "v1", Method.adapter, TARGET)
    items = tuple(ServedItem(index=i, confidence=0.95) for i in range(200))
    store.record(ServedResponse("other-replica", "score", "adapter", "a", "v1", 0.0, items))
    store.add_feedback([Label("other-replica", i, True) for i in range(200)], now=1.0)
    now[0] = 59.0
    with pytest.raises(NotEnoughLabelsError):  # still the cached refusal
        await book.selection("a", "v1", Method.adapter, TARGET)
    now[0] = 61.0
    selection = await book.selection("a", "v1", Method.adapter, TARGET)
    assert selection.n_labels == 200 and selection.source == "outcome_store"
    store.close()


def sse_json(text: str) -> list[dict]:
    frames = [line.removeprefix("data: ") for line in text.split("\n\n") if line.startswith("data: ")]
    return [json.loads(frame) for frame in frames if frame != "[DONE]"]


def test_the_streamed_generate_decides_on_its_final_event_only_when_asked(client):
    plain = sse_json(client.post("/generate", json={"prompt": "2+2?", "stream": True}).text)
    assert "confidence" in plain[-1] and "decision" not in plain[-1]
    decided = sse_json(
        client.post("/generate", json={"prompt": "2+2?", "stream": True, "abstain_below": 0.0}).text
    )
    assert decided[-1]["decision"] == "answer"
    assert all("decision" not in event for event in decided[:-1])
