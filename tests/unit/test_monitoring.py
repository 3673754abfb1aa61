"""GET /metrics on the fake engine: request, token, engine and confidence metrics, bounded
labels, and the PSI gauge rising when the traffic mix moves away from the reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from service.app import build_app
from service.calibration import query as cq
from service.engine.base import LoRA
from service.monitoring.prometheus import BIN_LABELS, confidence_bin
from tests.fake_engine import FakeEngine, fake_gap
from tests.unit.conftest import wait_ready, write_adapter


def sample(client, name, **labels):
    return client.app.state.monitor.metrics.registry.get_sample_value(name, labels)


def test_metrics_page_is_prometheus_text_with_engine_and_capacity(client):
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    assert all(name.startswith("confidence_") for name in families)
    assert sample(client, "confidence_engine_healthy") == 1.0
    assert sample(client, "confidence_inflight_sequences_limit") == 256
    assert sample(client, "confidence_inflight_sequences") == 0
    # Every served adapter's calibration series exist at 0 before any feedback.
    for bin_label in BIN_LABELS:
        labels = {
            "adapter": "other",
            "version": "v1",
            "method": "adapter",
            "bin": bin_label,
            "outcome": "correct",
        }
        assert sample(client, "confidence_feedback_total", **labels) == 0.0


def test_dead_engine_reads_unhealthy(client, engine):
    engine.dead = True
    client.get("/metrics")
    assert sample(client, "confidence_engine_healthy") == 0.0


def test_requests_are_counted_and_timed_with_bounded_labels(client):
    body = client.post("/generate", json={"prompt": "2+2?"}).json()
    client.post("/score", json={"items": [{"question": "q", "answer": "a"}] * 3, "method": "zero_shot"})
    client.post("/generate", json={"prompt": "x", "adapter": "no-such-adapter"})
    client.post("/generate", json={"prompt": ""})
    client.get("/no-such-path")
    ok = {"endpoint": "/generate", "method": "adapter", "adapter": "default-unc"}
    assert sample(client, "confidence_requests_total", **ok, code="200") == 1
    assert sample(client, "confidence_request_duration_seconds_count", **ok) == 1
    zero = {"endpoint": "/score", "method": "zero_shot", "adapter": "none", "code": "200"}
    assert sample(client, "confidence_requests_total", **zero) == 1
    # A name the client made up must not become a label value.
    unserved = {"endpoint": "/generate", "method": "adapter", "adapter": "unserved", "code": "404"}
    assert sample(client, "confidence_requests_total", **unserved) == 1
    invalid = {"endpoint": "/generate", "method": "", "adapter": "", "code": "400"}
    assert sample(client, "confidence_requests_total", **invalid) == 1
    assert (
        sample(client, "confidence_requests_total", endpoint="other", method="", adapter="", code="404") == 1
    )
    assert sample(client, "confidence_generated_tokens_total") == body["usage"]["completion_tokens"]
    assert sample(client, "confidence_prompt_tokens_total") == body["usage"]["prompt_tokens"]
    served = {"adapter": "none", "version": "none", "method": "zero_shot"}
    assert sample(client, "confidence_served_confidence_count", **served) == 3


def test_feedback_counters_carry_bin_outcome_and_sums(client):
    body = client.post(
        "/score", json={"items": [{"question": f"q{i}", "answer": "a"} for i in range(4)]}
    ).json()
    labels = [{"id": body["id"], "index": i, "correct": i < 1} for i in range(4)]
    client.post("/feedback", json={"items": labels})
    client.post("/feedback", json={"items": labels})  # duplicates are not counted again
    confidences = [item["confidence"] for item in body["items"]]
    per_bin: dict[str, list[float]] = {}
    for p in confidences:
        per_bin.setdefault(confidence_bin(p), []).append(p)
    base = {"adapter": "default-unc", "version": "v1", "method": "adapter"}
    for bin_label, ps in per_bin.items():
        total = sum(
            sample(client, "confidence_feedback_total", **base, bin=bin_label, outcome=o)
            for o in ("correct", "incorrect")
        )
        assert total == len(ps)
        assert sample(
            client, "confidence_feedback_confidence_sum_total", **base, bin=bin_label
        ) == pytest.approx(sum(ps))
    squared = sum((p - (i < 1)) ** 2 for i, p in enumerate(confidences))
    assert sample(client, "confidence_feedback_squared_error_total", **base) == pytest.approx(squared)


def test_confidence_bins_follow_the_training_jobs_ece_bins():
    assert [confidence_bin(p) for p in (0.0, 0.0999, 0.1, 0.55, 0.9, 1.0)] == [
        "0.0",
        "0.0",
        "0.1",
        "0.5",
        "0.9",
        "0.9",
    ]


def fake_confidence(
    engine: FakeEngine, question: str, answer: str, *, lora_id: int, temperature: float
) -> float:
    ids = cq.query_ids(engine.tokenizer, [{"role": "user", "content": question}], answer)
    return cq.sigmoid(fake_gap(ids, LoRA("x", lora_id, None)) / temperature)  # type: ignore[arg-type]


def psi_by_hand(actual: list[float], expected_counts: list[int]) -> float:
    counts, _ = np.histogram(actual, bins=10, range=(0.0, 1.0))
    a = np.maximum(counts / counts.sum(), 1e-4)
    e = np.maximum(np.asarray(expected_counts) / sum(expected_counts), 1e-4)
    return float(np.sum((a - e) * np.log(a / e)))


def test_psi_rises_when_the_traffic_mix_changes(tmp_path, settings):
    """The adapter's reference histogram comes from "easy" questions (low fake confidence);
    live traffic first matches it, then moves to a different kind of question."""
    engine = FakeEngine()
    labels = cq.label_tokens(engine.tokenizer)  # first, as at start-up: the fake vocabulary grows
    pool = [(f"question {i} about topic {i % 7}?", f"answer {i}") for i in range(1200)]
    conf = {qa: fake_confidence(engine, *qa, lora_id=1, temperature=1.0) for qa in pool}
    usual = [qa for qa in pool if conf[qa] < 0.75]
    unusual = [qa for qa in pool if conf[qa] >= 0.8]
    reference, first, second = usual[:300], usual[300:400], unusual[:100]
    assert len(usual) >= 400 and len(second) == 100
    histogram = np.histogram([conf[qa] for qa in reference], bins=10, range=(0.0, 1.0))[0]
    root = tmp_path / "drift-adapters"
    write_adapter(
        root,
        "drifty",
        "v1",
        temperature=1.0,
        label_token_ids={"no": labels.no_id, "yes": labels.yes_id},
        reference_histogram={"bin_edges": [k / 10 for k in range(11)], "counts": histogram.tolist()},
    )
    settings = settings.model_copy(
        update={"adapter_root": root, "default_adapter": "drifty", "drift_window": 100, "max_score_items": 50}
    )
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        served: list[float] = []

        def send(batch):
            for start in range(0, len(batch), 50):
                items = [{"question": q, "answer": a} for q, a in batch[start : start + 50]]
                served.extend(
                    it["confidence"] for it in client.post("/score", json={"items": items}).json()["items"]
                )
            families = text_string_to_metric_families(client.get("/metrics").text)
            values = {
                s.name: s.value for f in families for s in f.samples if s.labels.get("adapter") == "drifty"
            }
            return values["confidence_psi"], values["confidence_psi_window_samples"]

        psi_usual, n_usual = send(first)
        assert served == pytest.approx([conf[qa] for qa in first])  # the fake engine as predicted
        psi_shifted, n_shifted = send(second)
    print(f"PSI on usual traffic {psi_usual:.4f}, after the mix changed {psi_shifted:.4f}")
    assert n_usual == n_shifted == 100
    assert psi_usual == pytest.approx(psi_by_hand(served[:100], histogram.tolist()))
    assert psi_shifted == pytest.approx(psi_by_hand(served[100:], histogram.tolist()))
    assert psi_usual < 0.1 <= 0.2 <= psi_shifted
    assert math.isfinite(psi_shifted)


def test_no_psi_without_a_reference_and_a_malformed_one_is_refused(tmp_path, settings, engine):
    root = tmp_path / "refless"
    write_adapter(root, "plain", "v1")
    broken = write_adapter(root, "broken", "v1")
    # A malformed reference histogram (3 counts for 1 bin) no longer loads: the manifest is refused.
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["reference_histogram"] = {"bin_edges": [0.0, 1.0], "counts": [1, 2, 3]}
    (broken / "manifest.json").write_text(json.dumps(manifest))
    settings = settings.model_copy(update={"adapter_root": root, "default_adapter": "plain"})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        assert client.get("/adapters").json()["rejected"] == {"broken": "invalid manifest"}
        response = client.post("/generate", json={"prompt": "x", "adapter": "plain"})
        assert response.status_code == 200, response.text
        assert sample(client, "confidence_psi", adapter="plain", version="v1", method="adapter") is None
        assert (
            sample(
                client, "confidence_served_confidence_count", adapter="plain", version="v1", method="adapter"
            )
            == 1
        )


def test_versions_served_side_by_side_are_monitored_apart(tmp_path, settings, engine):
    """During a hot swap both versions serve: each gets its own confidence, feedback and drift
    series, and an unloaded version's drift gauge disappears (a frozen value could page)."""
    root = tmp_path / "swap"
    reference = {"bin_edges": [k / 10 for k in range(11)], "counts": [1] * 10}
    for version in ("v1", "v2"):
        write_adapter(root, "unc", version, reference_histogram=reference)
    write_adapter(root, "other", "v1")
    settings = settings.model_copy(update={"adapter_root": root, "default_adapter": "unc"})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        registry = client.app.state.service_state.service.registry
        registry.add(registry.prepare("unc", "v1"))  # start-up loaded the newest, v2
        for spec in ("unc@v1", "unc@v2", "unc@v2"):
            body = client.post("/generate", json={"prompt": "x", "adapter": spec}).json()
            client.post("/feedback", json={"id": body["id"], "correct": True})
        for version, served in (("v1", 1), ("v2", 2)):
            labels = {"adapter": "unc", "version": version, "method": "adapter"}
            assert sample(client, "confidence_served_confidence_count", **labels) == served
            assert sample(client, "confidence_feedback_squared_error_total", **labels) is not None
            assert (
                sample(
                    client, "confidence_psi_window_samples", adapter="unc", version=version, method="adapter"
                )
                == served
            )
        pinned = {"endpoint": "/generate", "method": "adapter", "adapter": "unc", "code": "200"}
        assert sample(client, "confidence_requests_total", **pinned) == 3  # a pin counts under its name
        registry.set_default("unc@v1")  # what the admin API does
        registry.set_default("other")
        assert client.get("/calibration").json()["adapter"] == "other"
        registry.retire("unc@v1")
        metrics = client.get("/metrics").text
    assert 'confidence_psi{adapter="unc",method="adapter",version="v2"}' in metrics
    assert 'confidence_psi{adapter="unc",method="adapter",version="v1"}' not in metrics
