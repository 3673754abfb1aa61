"""The HTTP API on the fake engine: shapes, confidence wiring, errors."""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient

from service.calibration import query as cq
from service.engine.base import LoRA
from service.settings import Settings
from tests.fake_engine import FakeEngine, fake_gap
from tests.unit.conftest import wait_ready


def expected_confidence(
    engine: FakeEngine, question: str, answer: str, lora_id: int | None, t: float
) -> float:
    ids = cq.query_ids(engine.tokenizer, [{"role": "user", "content": question}], answer)
    lora = LoRA("x", lora_id, None) if lora_id else None  # type: ignore[arg-type]
    return cq.sigmoid(fake_gap(ids, lora) / t)


def test_generate_answers_with_base_and_scores_with_default_adapter(client, engine):
    response = client.post("/generate", json={"prompt": "capital of France?"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["adapter"] == {"name": "default-unc", "version": "v1"}
    assert body["method"] == "adapter"
    assert body["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 4
    generate_calls = [lora for kind, lora in engine.calls if kind == "generate"]
    assert generate_calls[-1] is None  # the answer comes from the base model
    lora_id = engine.calls[-1][1].int_id
    expected = expected_confidence(engine, "capital of France?", body["text"], lora_id, 2.0)
    assert body["confidence"] == pytest.approx(expected)


@pytest.mark.parametrize("stream", [False, True])
def test_answer_with_adapter_generates_and_reads_through_the_same_adapter(client, engine, stream):
    response = client.post(
        "/generate", json={"prompt": "capital of Peru?", "answer_with_adapter": True, "stream": stream}
    )
    assert response.status_code == 200, response.text
    kinds = {"generate", "generate_stream"}
    generated = [lora for kind, lora in engine.calls if kind in kinds][-1]
    read = engine.calls[-1]
    assert read[0] == "logprobs" and generated is not None and generated == read[1]


def test_answer_with_adapter_without_an_adapter_is_a_400_naming_the_field(client):
    response = client.post(
        "/generate", json={"prompt": "2+2?", "method": "zero_shot", "answer_with_adapter": True}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "answer_with_adapter"


def test_zero_shot_reads_the_base_model_at_temperature_one(client, engine):
    body = client.post("/generate", json={"prompt": "2+2?", "method": "zero_shot"}).json()
    assert body["adapter"] is None and body["method"] == "zero_shot"
    assert engine.calls[-1] == ("logprobs", None)
    assert body["confidence"] == pytest.approx(expected_confidence(engine, "2+2?", body["text"], None, 1.0))


def test_score_returns_one_confidence_per_item_in_order_and_batches(client, engine):
    items = [{"question": f"q{i}?", "answer": f"a{i}"} for i in range(6)]
    response = client.post("/score", json={"items": items, "adapter": "other"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [it["index"] for it in body["items"]] == list(range(6))
    lora_id = engine.calls[-1][1].int_id
    for item, scored in zip(items, body["items"], strict=True):
        assert scored["confidence"] == pytest.approx(
            expected_confidence(engine, item["question"], item["answer"], lora_id, 1.0)
        )
    assert engine.max_in_flight == 6  # all items were submitted at once


def test_adapter_changes_confidence(client):
    item = {"question": "Who wrote Hamlet?", "answer": "Shakespeare"}
    with_adapter = client.post("/score", json={"items": [item]}).json()["items"][0]["confidence"]
    zero_shot = client.post("/score", json={"items": [item], "method": "zero_shot"}).json()["items"][0]
    assert not math.isclose(with_adapter, zero_shot["confidence"])


@pytest.mark.parametrize(
    ("path", "payload", "status", "param"),
    [
        ("/generate", {"prompt": ""}, 400, None),
        ("/generate", {"prompt": "hi", "messages": [{"role": "user", "content": "x"}]}, 400, None),
        ("/generate", {"messages": [{"role": "assistant", "content": "x"}]}, 400, "messages"),
        ("/generate", {"prompt": 5}, 400, "prompt"),
        ("/generate", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ("/generate", {"prompt": "x", "max_tokens": 17}, 400, "max_tokens"),
        ("/generate", {"prompt": "x", "temperature": "hot"}, 400, "temperature"),
        ("/generate", {"prompt": "x", "bogus": 1}, 400, "bogus"),
        ("/generate", {"prompt": "word " * 300}, 400, "prompt"),
        ("/generate", {"prompt": "x", "adapter": "nope"}, 404, "adapter"),
        ("/generate", {"prompt": "x", "adapter": "other", "method": "zero_shot"}, 400, "adapter"),
        ("/generate", {"prompt": "x", "method": "magic"}, 400, "method"),
        ("/score", {"items": []}, 400, "items"),
        ("/score", {"items": [{"question": "q", "answer": "a"}] * 9}, 400, "items"),
        ("/score", {"items": [{"question": "  ", "answer": "a"}]}, 400, "items[0]"),
        ("/score", {"items": [{"question": "q"}]}, 400, "items[0].answer"),
        (
            "/score",
            {"items": [{"question": "q", "answer": "a"}, {"question": "q", "answer": "w " * 300}]},
            400,
            "items[1]",
        ),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_problem(client, path, payload, status, param):
    response = client.post(path, json=payload)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if param is not None:
        assert error["param"] is not None and error["param"].startswith(param)


def test_malformed_json_is_a_400(client):
    response = client.post("/generate", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request"


def test_adapter_method_without_any_adapter_is_a_clear_409(tmp_path, engine):
    settings = Settings(adapter_root=tmp_path / "empty", default_adapter="missing")
    with TestClient(build_app_for(settings, engine)) as client:
        wait_ready(client)
        response = client.post("/generate", json={"prompt": "x"})
        assert response.status_code == 409
        assert "zero_shot" in response.json()["error"]["message"]
        assert client.post("/generate", json={"prompt": "x", "method": "zero_shot"}).status_code == 200


def test_overload_is_429_with_retry_after(settings, engine):
    settings = settings.model_copy(update={"max_inflight_sequences": 4})
    with TestClient(build_app_for(settings, engine)) as client:
        wait_ready(client)
        items = [{"question": "q", "answer": "a"}] * 5
        response = client.post("/score", json={"items": items})
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        assert client.post("/score", json={"items": items[:4]}).status_code == 200


def test_health_and_ready_report_a_failed_start(settings):
    with TestClient(build_app_for(settings, FakeEngine(fail_start=True))) as client:
        for _ in range(100):
            if client.get("/health").status_code == 503:
                break
        assert client.get("/health").status_code == 503
        ready = client.get("/ready")
        assert ready.status_code == 503 and "retry-after" in ready.headers
        response = client.post("/generate", json={"prompt": "x"})
        assert response.status_code == 503
        assert response.json()["error"]["type"] == "engine_dead"


def test_dead_engine_turns_health_503(client, engine):
    assert client.get("/health").status_code == 200
    engine.dead = True
    assert client.get("/health").status_code == 503
    assert client.post("/generate", json={"prompt": "x"}).status_code == 503


def test_ready_lists_served_adapters(client):
    body = client.get("/ready").json()
    assert {a["name"] for a in body["adapters"]} == {"default-unc", "other"}


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    assert "/score" in client.get("/openapi.json").json()["paths"]


def build_app_for(settings, engine):
    from service.app import build_app

    return build_app(settings, engine=engine)
