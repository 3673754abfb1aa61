"""Method "calibrated_head" on the fake engine: the head's inputs, batching, refusals, monitoring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from service.calibration import estimator
from service.calibration import query as cq
from service.engine.base import LoRA
from service.lora.manifest import AdapterManifest
from service.settings import Settings
from tests.fake_engine import FakeEngine, fake_gap
from tests.unit.conftest import wait_ready, write_adapter

HEAD = {
    "features": list(estimator.FEATURE_NAMES),
    "coef": [0.7, 0.3, 0.5, -0.2, 0.1, 0.2, 0.3, 0.4, -0.6],
    "intercept": -1.0,
    "mean": [0.0, -5.0, -2.0, 1.5, 0.1, 0.0, -1.0, -0.5, 0.1],
    "scale": [1.0, 3.0, 1.0, 0.5, 0.3, 1.0, 2.0, 1.0, 0.3],
}
REFERENCE = {"bin_edges": [i / 10 for i in range(11)], "counts": [10] * 10}


@pytest.fixture
def head_client(tmp_path: Path, engine: FakeEngine):
    root = tmp_path / "adapters"
    write_adapter(root, "unc", "v2", temperature=2.0, head=HEAD, head_reference_histogram=REFERENCE)
    write_adapter(root, "plain", "v1")
    settings = Settings(adapter_root=root, default_adapter="unc", default_max_tokens=4, max_tokens_limit=16)
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        yield client


def expected(
    engine: FakeEngine, question: str, answer: str, lora_id: int, answer_logprobs: list[float]
) -> float:
    chat = [{"role": "user", "content": question}]
    gap = fake_gap(cq.query_ids(engine.tokenizer, chat, answer), LoRA("x", lora_id, None))  # type: ignore[arg-type]
    values = estimator.features(gap, estimator.answer_likelihood(answer_logprobs), answer)
    return estimator.head_confidence(estimator.HeadParams(**HEAD), values)


def test_score_combines_the_adapter_gap_with_the_answer_prefill(head_client, engine):
    items = [
        {"question": "Capital of France?", "answer": "Paris"},
        {"question": "7 x 8?", "answer": "fifty six"},
    ]
    body = head_client.post("/score", json={"items": items, "method": "calibrated_head"}).json()
    assert body["method"] == "calibrated_head"
    lora_id = [lora.int_id for kind, lora in engine.calls if kind == "logprobs" and lora][-1]
    for item, scored in zip(items, body["items"], strict=True):
        n_tokens = len(engine.tokenizer.encode(item["answer"], add_special_tokens=False))
        # the fake engine gives every prompt token log-probability -1.0
        assert scored["confidence"] == pytest.approx(
            expected(engine, item["question"], item["answer"], lora_id, [-1.0] * n_tokens)
        )
    # both reads of both items were in flight together: one batch
    assert engine.max_in_flight == 4
    assert [kind for kind, _ in engine.calls].count("prompt_logprobs") == 2


def test_generate_reads_the_sampled_tokens_log_probs_without_an_extra_pass(head_client, engine):
    body = head_client.post(
        "/generate", json={"prompt": "capital of France?", "method": "calibrated_head"}
    ).json()
    assert body["method"] == "calibrated_head"
    assert "prompt_logprobs" not in [kind for kind, _ in engine.calls]
    lora_id = engine.calls[-1][1].int_id
    n = len(engine.tokenizer.encode(body["text"], add_special_tokens=False))
    assert body["confidence"] == pytest.approx(
        expected(engine, "capital of France?", body["text"], lora_id, [-0.5] * n)
    )


def test_the_adapter_method_stays_the_papers_query(head_client, engine):
    item = {"question": "Capital of France?", "answer": "Paris"}
    body = head_client.post("/score", json={"items": [item], "method": "adapter"}).json()
    assert body["method"] == "adapter"
    assert "prompt_logprobs" not in [kind for kind, _ in engine.calls]
    lora_id = engine.calls[-1][1].int_id
    ids = cq.query_ids(engine.tokenizer, [{"role": "user", "content": item["question"]}], item["answer"])
    gap = fake_gap(ids, LoRA("x", lora_id, None))  # type: ignore[arg-type]
    assert body["items"][0]["confidence"] == pytest.approx(cq.sigmoid(gap / 2.0))


def test_an_adapter_without_a_head_refuses_the_method_with_a_400(head_client):
    response = head_client.post(
        "/score",
        json={"items": [{"question": "q?", "answer": "a"}], "adapter": "plain", "method": "calibrated_head"},
    )
    assert response.status_code == 400
    assert "no calibrated head" in response.text


def test_a_manifest_with_a_bad_head_is_not_served(tmp_path):
    path = write_adapter(tmp_path, "unc", "v3")
    data = json.loads((path / "manifest.json").read_text())
    data["head"] = {**HEAD, "features": [*estimator.FEATURE_NAMES[:-1], "shoe"]}
    (path / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown head features"):
        AdapterManifest.read(path)


def test_metrics_and_drift_are_kept_per_method(head_client):
    for method in ("adapter", "calibrated_head"):
        head_client.post("/score", json={"items": [{"question": "q?", "answer": "a"}], "method": method})
    text = head_client.get("/metrics").text
    for method in ("adapter", "calibrated_head"):
        series = f'confidence_served_confidence_count{{adapter="unc",method="{method}",version="v2"}} 1.0'
        assert series in text
    # only the head has a reference histogram in this manifest: only its PSI exists
    psi_lines = [line for line in text.splitlines() if line.startswith("confidence_psi{")]
    assert psi_lines and all('method="calibrated_head"' in line for line in psi_lines)
