"""POST /feedback and GET /calibration on the fake engine: joins, idempotency, errors,
the outcome store behind them, and calibration numbers checked against a hand computation."""

from __future__ import annotations

import sqlite3

import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from service.feedback.store import OutcomeStore, sqlite_dialect
from tests.monitoring_helpers import hand_calibration
from tests.unit.conftest import wait_ready


def rows(db_path):
    with sqlite3.connect(db_path) as conn:
        return conn.execute(
            "SELECT response_id, item_index, adapter, adapter_version, method, confidence, chat, answer,"
            " correct FROM confidence_outcomes ORDER BY response_id, item_index"
        ).fetchall()


def recorded(client) -> None:
    """Wait until the background writer has stored every response served so far."""
    assert client.app.state.monitor.writer.wait_handled(10.0)


def score(client, n, **extra):
    items = [{"question": f"question {i}?", "answer": f"answer {i}"} for i in range(n)]
    response = client.post("/score", json={"items": items, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_every_served_confidence_is_recorded_without_text_by_default(client, settings):
    generated = client.post("/generate", json={"prompt": "capital of France?"}).json()
    scored = score(client, 3, method="zero_shot")
    recorded(client)
    stored = rows(settings.feedback_db_path)
    assert len(stored) == 4
    by_key = {(r[0], r[1]): r for r in stored}
    gen = by_key[(generated["id"], 0)]
    assert gen[2:6] == ("default-unc", "v1", "adapter", pytest.approx(generated["confidence"]))
    for item in scored["items"]:
        row = by_key[(scored["id"], item["index"])]
        assert row[2:6] == (None, None, "zero_shot", pytest.approx(item["confidence"]))
    assert all(r[6] is None and r[7] is None and r[8] is None for r in stored)  # no text, no label yet


def test_prompt_text_is_stored_only_when_allowed(settings, engine):
    settings = settings.model_copy(update={"feedback_store_prompts": True})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        generated = client.post("/generate", json={"prompt": "capital of France?"}).json()
        recorded(client)
        (row,) = rows(settings.feedback_db_path)
    assert row[6] == '[{"role": "user", "content": "capital of France?"}]'
    assert row[7] == generated["text"]


def test_feedback_for_generate_is_stored_and_idempotent(client, settings):
    generated = client.post("/generate", json={"prompt": "2+2?"}).json()
    first = client.post("/feedback", json={"id": generated["id"], "correct": True})
    assert first.status_code == 200, first.text
    assert first.json() == {"recorded": 1, "duplicates": 0}
    again = client.post("/feedback", json={"id": generated["id"], "correct": True})
    assert again.json() == {"recorded": 0, "duplicates": 1}
    assert rows(settings.feedback_db_path)[0][8] == 1
    flipped = client.post("/feedback", json={"id": generated["id"], "correct": False})
    assert flipped.status_code == 409
    assert flipped.json()["error"]["type"] == "feedback_conflict"
    assert rows(settings.feedback_db_path)[0][8] == 1  # the stored label is unchanged


def test_feedback_for_score_items_needs_the_index(client, settings):
    scored = score(client, 3)
    missing = client.post("/feedback", json={"id": scored["id"], "correct": True})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "index"
    beyond = client.post("/feedback", json={"id": scored["id"], "index": 3, "correct": True})
    assert beyond.status_code == 404 and beyond.json()["error"]["param"] == "index"
    ok = client.post("/feedback", json={"id": scored["id"], "index": 2, "correct": False})
    assert ok.json() == {"recorded": 1, "duplicates": 0}
    labels = [r[8] for r in rows(settings.feedback_db_path)]
    assert labels == [None, None, 0]


def test_a_batch_is_stored_all_or_nothing(client, settings):
    scored = score(client, 2)
    batch = [
        {"id": scored["id"], "index": 0, "correct": True},
        {"id": "score-does-not-exist", "index": 0, "correct": True},
    ]
    response = client.post("/feedback", json={"items": batch})
    assert response.status_code == 404
    assert response.json()["error"]["param"] == "items[1].id"
    assert all(r[8] is None for r in rows(settings.feedback_db_path))
    batch[1] = {"id": scored["id"], "index": 1, "correct": False}
    assert client.post("/feedback", json={"items": batch}).json() == {"recorded": 2, "duplicates": 0}
    # The same item twice in one batch: the second is a duplicate, not a second count.
    generated = client.post("/generate", json={"prompt": "x"}).json()
    twice = [{"id": generated["id"], "correct": False}] * 2
    assert client.post("/feedback", json={"items": twice}).json() == {"recorded": 1, "duplicates": 1}


@pytest.mark.parametrize(
    ("payload", "param"),
    [
        ({}, None),
        ({"id": "gen-x"}, None),
        ({"id": "gen-x", "correct": "yes"}, "correct"),
        ({"id": "gen-x", "correct": 1}, "correct"),
        ({"id": "", "correct": True}, "id"),
        ({"id": "gen-x", "index": -1, "correct": True}, "index"),
        ({"id": "gen-x", "correct": True, "items": [{"id": "gen-y", "correct": True}]}, None),
        ({"items": []}, "items"),
        ({"items": [{"id": "gen-y"}]}, "items[0].correct"),
        ({"id": "gen-x", "correct": True, "extra": 1}, "extra"),
    ],
)
def test_bad_feedback_is_a_400_naming_the_problem(client, payload, param):
    response = client.post("/feedback", json=payload)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["message"]
    assert error["param"] == param


def test_unknown_id_is_a_404(client):
    response = client.post("/feedback", json={"id": "gen-unknown", "correct": True})
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "response_not_found"


def test_a_locked_store_is_a_503_and_nothing_is_acknowledged(client, settings):
    generated = client.post("/generate", json={"prompt": "2+2?"}).json()
    quick = sqlite_dialect(settings.feedback_db_path, busy_timeout_s=0.05)
    client.app.state.monitor.store = OutcomeStore(quick)
    blocker = sqlite3.connect(settings.feedback_db_path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        response = client.post("/feedback", json={"id": generated["id"], "correct": True})
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "feedback_store_unavailable"
        assert "nothing was stored" in response.json()["error"]["message"]
        assert "retry-after" in response.headers
        # Serving goes on while the store is locked; the miss is counted.
        assert client.post("/generate", json={"prompt": "3+3?"}).status_code == 200
        recorded(client)
    finally:
        blocker.rollback()
        blocker.close()
    registry = client.app.state.monitor.metrics.registry
    assert registry.get_sample_value("confidence_feedback_store_errors_total", {"operation": "feedback"}) == 1
    assert registry.get_sample_value("confidence_feedback_store_errors_total", {"operation": "record"}) == 1
    retried = client.post("/feedback", json={"id": generated["id"], "correct": True})
    assert retried.json() == {"recorded": 1, "duplicates": 0}  # the 503'd label was not stored


def overconfident_label(index: int) -> bool:
    """Synthetic truth: one answer in four is right, whatever the confidence says."""
    return index % 4 == 0


def test_calibration_report_matches_a_hand_computation(client):
    scored = score(client, 8)
    more = score(client, 8)
    pairs = []
    for response in (scored, more):
        batch = []
        for item in response["items"]:
            correct = overconfident_label(item["index"])
            batch.append({"id": response["id"], "index": item["index"], "correct": correct})
            pairs.append((item["confidence"], int(correct)))
        assert client.post("/feedback", json={"items": batch}).status_code == 200
    client.post("/generate", json={"prompt": "unlabelled"})  # served, never labelled: not counted
    report = client.get("/calibration", params={"window": "1h"})
    assert report.status_code == 200, report.text
    body = report.json()
    ece, brier, accuracy = hand_calibration(pairs)
    assert body["adapter"] == "default-unc" and body["n"] == 16 and body["n_correct"] == 4
    assert body["ece"] == pytest.approx(ece)
    assert body["brier"] == pytest.approx(brier)
    assert body["accuracy"] == pytest.approx(accuracy)
    assert body["mean_confidence"] == pytest.approx(sum(p for p, _ in pairs) / 16)
    assert 0.0 <= body["auroc"] <= 1.0
    assert sum(b["count"] for b in body["bins"]) == 16
    assert [b["lower"] for b in body["bins"]] == pytest.approx([k / 10 for k in range(10)])


def test_calibration_filters_by_method_and_window(client):
    scored = score(client, 2, method="zero_shot")
    client.post("/feedback", json={"items": [{"id": scored["id"], "index": 0, "correct": True}]})
    adapter_report = client.get("/calibration").json()
    assert adapter_report["n"] == 0 and adapter_report["ece"] is None and adapter_report["note"]
    zero = client.get("/calibration", params={"method": "zero_shot", "window": "7d"}).json()
    assert zero["n"] == 1 and zero["auroc"] is None and "one class" in zero["note"]
    monitor = client.app.state.monitor
    later = monitor.clock() + 7200
    monitor.clock = lambda: later
    assert client.get("/calibration", params={"method": "zero_shot", "window": "1h"}).json()["n"] == 0


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"window": "1y"}, "window"),
        ({"window": "0h"}, "window"),
        ({"window": "-1h"}, "window"),
        ({"method": "magic"}, "method"),
        ({"method": "zero_shot", "adapter": "other"}, "adapter"),
    ],
)
def test_bad_calibration_query_is_a_400(client, params, param):
    response = client.get("/calibration", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].endswith(param)


def test_a_feedback_db_url_must_be_postgresql():
    from pydantic import ValidationError

    from service.settings import Settings

    with pytest.raises(ValidationError, match="postgresql://"):
        Settings(feedback_db_url="mysql://user@host/db")
    assert Settings(feedback_db_url="postgresql://u@h/db").feedback_db_url == "postgresql://u@h/db"


def test_an_unreachable_database_fails_feedback_and_reports_but_not_answers(settings, engine):
    settings = settings.model_copy(update={"feedback_db_url": "postgresql://postgres@127.0.0.1:9/none"})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        generated = client.post("/generate", json={"prompt": "2+2?"})
        assert generated.status_code == 200
        feedback = client.post("/feedback", json={"id": generated.json()["id"], "correct": True})
        report = client.get("/calibration")
    assert feedback.status_code == 503 and "nothing was stored" in feedback.json()["error"]["message"]
    assert report.status_code == 503 and report.json()["error"]["type"] == "feedback_store_unavailable"
