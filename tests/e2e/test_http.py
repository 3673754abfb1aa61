"""End to end: SmolLM2-135M on vLLM behind `confidence serve`, over loopback HTTP."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.e2e.conftest import SAME_READ_ABS

pytestmark = pytest.mark.e2e


def test_generate_answers_the_readme_example(server):
    response = httpx.post(
        f"{server}/generate", json={"prompt": "What is the capital of France?"}, timeout=120
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert "Paris" in body["text"]
    assert 0.0 <= body["confidence"] <= 1.0
    assert body["usage"]["completion_tokens"] > 0


def test_zero_shot_always_works(server):
    response = httpx.post(
        f"{server}/generate",
        json={"prompt": "Name a primary colour.", "method": "zero_shot", "max_tokens": 8},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["adapter"] is None


def test_score_orders_a_right_answer_above_a_wrong_one(server):
    items = [
        {"question": "What is the capital of France?", "answer": "The capital of France is Paris."},
        {"question": "What is the capital of France?", "answer": "The capital of France is Berlin."},
    ]
    response = httpx.post(f"{server}/score", json={"items": items, "method": "zero_shot"}, timeout=120)
    assert response.status_code == 200, response.text
    scores = [item["confidence"] for item in response.json()["items"]]
    assert len(scores) == 2 and all(0.0 <= s <= 1.0 for s in scores)
    assert scores[0] != scores[1]


def test_concurrent_requests_agree_with_single_ones(server):
    """Answers generated in one batch each carry the confidence of their own answer: the same
    (question, answer) scored alone gives the same number. (Greedy text itself may differ from
    a lone run where bf16 batch numerics flip a near-tie, so answers are not compared.)"""
    payloads = [
        {"prompt": f"What is {i} plus {i}?", "max_tokens": 8, "method": "zero_shot"} for i in range(6)
    ]

    async def run() -> list[dict]:
        async with httpx.AsyncClient(base_url=server, timeout=300) as client:
            responses = await asyncio.gather(*(client.post("/generate", json=p) for p in payloads))
        return [r.json() for r in responses]

    together = asyncio.run(run())
    items = [{"question": p["prompt"], "answer": b["text"]} for p, b in zip(payloads, together, strict=True)]
    alone = [
        httpx.post(f"{server}/score", json={"items": [item], "method": "zero_shot"}, timeout=120).json()
        for item in items
    ]
    # Distinct answers with distinct confidences, so a mix-up between batch rows would show.
    confidences = [b["confidence"] for b in together]
    assert max(confidences) - min(confidences) > 2 * SAME_READ_ABS, confidences
    print([(b["text"], round(b["confidence"], 4)) for b in together])
    for single, batched in zip(alone, together, strict=True):
        assert single["items"][0]["confidence"] == pytest.approx(batched["confidence"], abs=SAME_READ_ABS)


def test_prompt_longer_than_the_context_is_a_400(server):
    response = httpx.post(
        f"{server}/generate", json={"prompt": "word " * 5000, "method": "zero_shot"}, timeout=60
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "prompt"


def test_shipped_adapter_is_served_by_default_and_changes_confidence(server):
    ready = httpx.get(f"{server}/ready", timeout=10).json()
    assert "smollm2-135m-uncertainty" in {a["name"] for a in ready["adapters"]}
    items = [
        {"question": "What is 17 + 25?", "answer": "42"},
        {"question": "Who wrote Hamlet?", "answer": "Dickens"},
    ]
    tuned = httpx.post(f"{server}/score", json={"items": items}, timeout=120).json()
    zero = httpx.post(f"{server}/score", json={"items": items, "method": "zero_shot"}, timeout=120).json()
    assert tuned["adapter"]["name"] == "smollm2-135m-uncertainty"
    for a, b in zip(tuned["items"], zero["items"], strict=True):
        assert a["confidence"] != pytest.approx(b["confidence"], abs=1e-4)


def test_feedback_and_drift_gauge_for_the_shipped_adapter(server):
    """The shipped adapter's manifest carries its reference histogram: serving through it
    feeds the PSI gauge, and feedback on the answer becomes a calibration count."""
    body = httpx.post(
        f"{server}/generate", json={"prompt": "What is 7 * 8?", "max_tokens": 8}, timeout=120
    ).json()
    adapter = body["adapter"]["name"]
    ack = httpx.post(f"{server}/feedback", json={"id": body["id"], "correct": False}, timeout=30)
    assert ack.status_code == 200 and ack.json()["recorded"] == 1
    metrics = httpx.get(f"{server}/metrics", timeout=30).text
    version, method = body["adapter"]["version"], body["method"]
    assert f'confidence_psi{{adapter="{adapter}",method="{method}",version="{version}"}}' in metrics
    report = httpx.get(f"{server}/calibration", params={"window": "1h"}, timeout=30).json()
    assert report["adapter"] == adapter and report["n"] >= 1
