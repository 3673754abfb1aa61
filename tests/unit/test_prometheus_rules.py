"""The Prometheus rules under deploy/prometheus/: promtool validates them, runs their unit
tests on synthetic series, and evaluates them on series scraped from the service's own
/metrics output (two replicas sharing one store), which must give the ECE, Brier and
accuracy that a longhand computation over the labelled confidences gives."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from service.app import build_app
from tests.fake_engine import FakeEngine
from tests.monitoring_helpers import (
    PROMETHEUS_DIR,
    RULES,
    assert_rules_give,
    hand_calibration,
    run_promtool,
    series_from_scrapes,
)
from tests.unit.conftest import wait_ready


def test_rule_files_are_valid():
    assert RULES, "no rule files under deploy/prometheus/rules"
    result = run_promtool("check", "rules", *map(str, RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_rule_unit_tests_pass():
    tests = sorted((PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert tests
    result = run_promtool("test", "rules", *map(str, tests))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_is_valid(tmp_path):
    # The config names rule files by their path inside the container: check a copy that
    # points at the repository's files.
    config = (PROMETHEUS_DIR / "prometheus.yml").read_text()
    assert "/etc/prometheus/rules/*.yml" in config
    local = tmp_path / "prometheus.yml"
    local.write_text(config.replace("/etc/prometheus/rules/*.yml", str(PROMETHEUS_DIR / "rules" / "*.yml")))
    result = run_promtool("check", "config", str(local))
    assert result.returncode == 0, result.stdout + result.stderr


def synthetic_truth(confidence: float, k: int) -> bool:
    """Labels whose accuracy is far from the confidence: right one time in three,
    whatever the service said."""
    return k % 3 == 0


@pytest.fixture
def replicas(settings):
    """Two replicas of the app (each with its own engine and metrics) on one store."""
    with (
        TestClient(build_app(settings, engine=FakeEngine())) as a,
        TestClient(build_app(settings, engine=FakeEngine())) as b,
    ):
        wait_ready(a)
        wait_ready(b)
        yield {"replica-a": a, "replica-b": b}


def test_recording_rules_on_real_metrics_give_the_hand_computed_ece(replicas, tmp_path):
    a, b = replicas["replica-a"], replicas["replica-b"]
    before = {name: client.get("/metrics").text for name, client in replicas.items()}
    served = []  # (response id, index, confidence)
    for i in range(4):
        items = [{"question": f"q{i}-{j}?", "answer": f"a{j}"} for j in range(8)]
        body = a.post("/score", json={"items": items}).json()
        served += [(body["id"], it["index"], it["confidence"]) for it in body["items"]]
    for i in range(6):
        body = b.post("/generate", json={"prompt": f"question number {i}"}).json()
        served.append((body["id"], None, body["confidence"]))
    pairs = []
    for k, (rid, index, confidence) in enumerate(served):
        correct = synthetic_truth(confidence, k)
        # Feedback reaches whichever replica the load balancer picks, not the one that served.
        target = a if k % 2 else b
        response = target.post("/feedback", json={"id": rid, "index": index, "correct": correct})
        assert response.json() == {"recorded": 1, "duplicates": 0}
        pairs.append((confidence, int(correct)))
    after = {name: client.get("/metrics").text for name, client in replicas.items()}

    ece, brier, accuracy = hand_calibration(pairs)
    mean_confidence = sum(p for p, _ in pairs) / len(pairs)
    print(
        f"n={len(pairs)} hand ECE={ece:.6f} Brier={brier:.6f} accuracy={accuracy:.4f} "
        f"mean confidence={mean_confidence:.4f}"
    )
    assert abs(mean_confidence - accuracy) > 0.1  # the labels really disagree with the confidences
    series, end = series_from_scrapes({name: [before[name], after[name]] for name in replicas})
    expected = {
        "adapter_version_method:confidence_ece:1h": ece,
        "adapter_version_method:confidence_brier:1h": brier,
        "adapter_version_method:confidence_accuracy:1h": accuracy,
        "adapter_version_method:confidence_overconfidence:1h": mean_confidence - accuracy,
        "adapter_version_method:confidence_feedback_count:increase1h": len(pairs),
    }
    assert_rules_give(
        tmp_path, series, end, expected, {"adapter": "default-unc", "version": "v1", "method": "adapter"}
    )
    # The in-process report over the shared store agrees, on either replica.
    report = b.get("/calibration", params={"window": "1h"}).json()
    assert report["n"] == len(pairs)
    assert report["ece"] == pytest.approx(ece) and report["brier"] == pytest.approx(brier)
