"""`confidence recalibrate` against a real HTTP server (uvicorn on loopback, fake engine): a stream
of labelled responses whose true accuracy differs from the shipped calibration, a refit whose
held-out ECE is lower with a CI that says so, promotion under concurrent load with no failed
request, and a rollback to the old default."""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import Counter

import httpx
import numpy as np
import pytest

from adapters import recalibrate as rc
from service.app import build_app
from service.feedback.store import Outcome
from service.lora.manifest import AdapterManifest
from service.settings import Settings
from tests.fake_engine import FakeEngine
from tests.http_server import serve_in_thread

TOKEN = "recal-token"
SHIPPED_T = 2.0  # the adapter_root fixture's default-unc@v1
TRUE_T = 0.5  # what the labels actually follow: the shipped confidences are far too soft


def uniform(key: str) -> float:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def true_probability(confidence: float, true_t: float) -> float:
    gap = SHIPPED_T * math.log(confidence / (1 - confidence))
    return 1 / (1 + math.exp(-gap / true_t))


def stream(url: str, n_requests: int, *, true_t: float) -> None:
    """Score batches of 8 and label every item with a draw from the true probability."""
    with httpx.Client(base_url=url, timeout=30) as client:
        for r in range(n_requests):
            items = [{"question": f"stream {r} {i}?", "answer": f"a {i}"} for i in range(8)]
            body = client.post("/score", json={"items": items}).json()
            labels = [
                {
                    "id": body["id"],
                    "index": item["index"],
                    "correct": uniform(f"{body['id']}:{item['index']}")
                    < true_probability(item["confidence"], true_t),
                }
                for item in body["items"]
            ]
            assert client.post("/feedback", json={"items": labels}).status_code == 200


@pytest.fixture
def served(settings, monkeypatch):
    monkeypatch.setenv("CONFIDENCE_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("CONFIDENCE_ADAPTER_ROOT", str(settings.adapter_root))
    engine = FakeEngine()
    settings = Settings.model_validate({**settings.model_dump(), "admin_token": TOKEN})
    with serve_in_thread(build_app(settings, engine=engine)) as url:
        yield url, engine, settings


class Load:
    """Clients scoring without a pause until stopped; every status code is counted."""

    def __init__(self, url: str, clients: int = 4) -> None:
        self.url = url
        self.codes: Counter[int] = Counter()
        self.versions: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(k,)) for k in range(clients)]

    def _run(self, k: int) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as client:
            i = 0
            while not self._stop.is_set():
                response = client.post(
                    "/score", json={"items": [{"question": f"load {k} {i}?", "answer": "x"}]}
                )
                with self._lock:
                    self.codes[response.status_code] += 1
                    if response.status_code == 200:
                        self.versions[response.json()["adapter"]["version"]] += 1
                i += 1

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)


def default_of(url: str) -> str:
    return httpx.get(f"{url}/adapters").json()["default"]


def test_recalibrate_promote_under_load_then_rollback(served, capsys):
    url, engine, settings = served
    stream(url, 100, true_t=TRUE_T)  # 800 labelled items
    engine.latency_s = 0.02  # keep requests in flight across the switch
    with Load(url) as load:
        while sum(load.codes.values()) < 20:  # the load is running before the switch
            time.sleep(0.005)
        assert rc.main(["--adapter", "default-unc@v1", "--window", "1d", "--promote", "--url", url]) == 0
        summary = json.loads(capsys.readouterr().out)
        before = sum(load.codes.values())
        while sum(load.codes.values()) < before + 20:  # ... and after it
            time.sleep(0.005)
    assert summary["outcome"] == "promoted", summary
    held = summary["heldout"]
    assert held["candidate"]["ece"]["value"] < held["current"]["ece"]["value"]
    assert held["difference"]["ece"]["ci_high"] < 0  # the CI says the refit is better
    assert summary["candidate"] == "default-unc@v1-recal1"
    assert default_of(url) == "default-unc@v1-recal1"
    assert set(load.codes) == {200}, load.codes  # 0 failed requests across the switch
    assert load.versions["v1"] > 0 and load.versions["v1-recal1"] > 0

    manifest = AdapterManifest.read(settings.adapter_root / "default-unc" / "v1-recal1")
    refit = manifest.model_extra["recalibration"]
    assert refit["parent"] == "v1" and refit["n_labels"] == 800
    assert refit["n_fit"] + refit["n_holdout"] == 800 and refit["n_holdout"] > 100
    assert manifest.temperature == pytest.approx(TRUE_T, rel=0.25)
    assert manifest.calibration_outcomes is not None and len(manifest.calibration_outcomes.gaps) == 800
    ids = json.loads((settings.adapter_root / "default-unc" / "v1-recal1" / rc.PROVENANCE_FILE).read_text())
    assert len(ids["fit"]) == refit["n_fit"] and len(ids["holdout"]) == refit["n_holdout"]
    # The shared LoRA weights are the same bytes.
    weights = [
        (settings.adapter_root / "default-unc" / v / "adapter_model.safetensors").read_bytes()
        for v in ("v1", "v1-recal1")
    ]
    assert weights[0] == weights[1]

    metrics = httpx.get(f"{url}/metrics").text
    assert 'confidence_recalibrations_total{adapter="default-unc",outcome="promoted"} 1.0' in metrics

    from service.cli import main as cli

    assert cli(["adapters", "--url", url, "rollback", "default-unc"]) == 0
    assert default_of(url) == "default-unc@v1"


def test_no_promotion_when_the_refit_is_not_better(served, capsys):
    url, _, _ = served
    stream(url, 60, true_t=SHIPPED_T)  # the labels follow the shipped calibration
    assert rc.main(["--adapter", "default-unc@v1", "--promote", "--url", url]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outcome"] == "not_better"
    assert summary["reason"].startswith("not promoted: held-out ECE difference")
    assert default_of(url) == "default-unc@v1"
    loaded = {
        a["version"] for a in httpx.get(f"{url}/adapters").json()["adapters"] if a["name"] == "default-unc"
    }
    assert loaded == {"v1"}  # the candidate was written but never loaded


def test_too_few_labels_is_refused_with_the_count(served, capsys):
    url, _, settings = served
    stream(url, 2, true_t=TRUE_T)
    assert rc.main(["--adapter", "default-unc@v1", "--url", url, "--report"]) == 1
    assert "has 16 labelled outcomes of method adapter in the window; at least 100 are needed" in (
        capsys.readouterr().err
    )
    assert not (settings.adapter_root / "default-unc" / "v1-recal1").exists()
    metrics = httpx.get(f"{url}/metrics").text
    assert 'confidence_recalibrations_total{adapter="default-unc",outcome="too_few_labels"} 1.0' in metrics


def test_a_restart_does_not_serve_a_candidate_that_was_never_promoted(settings, adapter_root, engine):
    from fastapi.testclient import TestClient

    from tests.unit.conftest import wait_ready, write_adapter

    write_adapter(adapter_root, "default-unc", "v1-recal1", recalibration={"parent": "v1"})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        assert client.get("/adapters").json()["default"] == "default-unc@v1"


def test_gaps_are_recovered_from_served_confidences():
    gaps = np.array([-3.0, -0.2, 0.0, 1.5, 7.0])
    temperature = 1.7
    outcomes = [
        Outcome(
            f"r{i}",
            0,
            "score",
            "adapter",
            "a",
            "v1",
            float(1 / (1 + np.exp(-g / temperature))),
            0.0,
            None,
            None,
            True,
            0.0,
        )
        for i, g in enumerate(gaps)
    ]
    assert rc.gaps_of(outcomes, temperature) == pytest.approx(gaps, abs=1e-9)


def test_window_parsing():
    assert rc.parse_window("30d") == 30 * 86400
    with pytest.raises(rc.RecalibrationError):
        rc.parse_window("0d")


def test_a_better_refit_can_go_to_shadow_instead_of_default(served, capsys):
    url, _, _ = served
    stream(url, 100, true_t=TRUE_T)
    assert rc.main(["--adapter", "default-unc@v1", "--window", "1d", "--shadow", "0.5", "--url", url]) == 0
    assert json.loads(capsys.readouterr().out)["outcome"] == "better"
    assert default_of(url) == "default-unc@v1"  # nothing promoted
    shadow = httpx.get(f"{url}/admin/shadow", headers={"Authorization": f"Bearer {TOKEN}"}).json()
    assert shadow == {"adapter": "default-unc@v1-recal1", "fraction": 0.5, "default": "default-unc@v1"}

    from service.cli import main as cli

    # No shadow evidence yet: promotion is refused and the default stays.
    assert cli(["adapters", "--url", url, "promote-shadow", "--min-labels", "50"]) == 1
    assert "0 labelled responses" in capsys.readouterr().err
    assert default_of(url) == "default-unc@v1"
    assert cli(["adapters", "--url", url, "shadow", "--off"]) == 0
    assert json.loads(capsys.readouterr().out)["adapter"] is None


# The default method of a version with a head is calibrated_head: its live labels refit the head.
TRUE_SLOPE, TRUE_OFFSET = 2.5, -1.5  # the head's logit is too soft and too high


def head_truth(confidence: float, slope: float = TRUE_SLOPE, offset: float = TRUE_OFFSET) -> float:
    z = math.log(confidence / (1 - confidence))
    return 1 / (1 + math.exp(-(slope * z + offset)))


@pytest.fixture
def served_head(settings, monkeypatch):
    """The server of `served`, with a version carrying a head as the default adapter."""
    from tests.unit.conftest import write_adapter
    from tests.unit.test_calibrated_head import HEAD

    root = settings.adapter_root
    write_adapter(root, "head-unc", "v1", temperature=2.0, head=HEAD)
    monkeypatch.setenv("CONFIDENCE_ADMIN_TOKEN", TOKEN)
    monkeypatch.setenv("CONFIDENCE_ADAPTER_ROOT", str(root))
    fields = {**settings.model_dump(), "admin_token": TOKEN, "default_adapter": "head-unc"}
    with serve_in_thread(build_app(Settings.model_validate(fields), engine=FakeEngine())) as url:
        yield url, root


def stream_head(url: str, n_requests: int, truth) -> list[float]:
    """Score batches of 8 naming no method (so calibrated_head) and label each item by a draw;
    returns the served confidences."""
    served: list[float] = []
    with httpx.Client(base_url=url, timeout=30) as client:
        for r in range(n_requests):
            items = [{"question": f"head stream {r} {i}?", "answer": f"a {i} {r % 7}"} for i in range(8)]
            body = client.post("/score", json={"items": items}).json()
            assert body["method"] == "calibrated_head"
            labels = [
                {
                    "id": body["id"],
                    "index": item["index"],
                    "correct": uniform(f"{body['id']}:{item['index']}") < truth(item["confidence"]),
                }
                for item in body["items"]
            ]
            assert client.post("/feedback", json={"items": labels}).status_code == 200
            served += [item["confidence"] for item in body["items"]]
    return served


def test_the_default_methods_labels_refit_the_head_and_the_new_head_serves_the_rescaling(served_head, capsys):
    url, root = served_head
    served = stream_head(url, 400, head_truth)  # 3,200 labels, half held out: the ECE CI is narrow
    args = ["--adapter", "head-unc@v1", "--window", "1d", "--holdout", "0.5", "--promote", "--url", url]
    assert rc.main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["outcome"] == "promoted", summary
    assert summary["heldout"]["difference"]["ece"]["ci_high"] < 0

    old = AdapterManifest.read(root / "head-unc" / "v1")
    new = AdapterManifest.read(root / "head-unc" / "v1-recal1")
    refit = new.model_extra["recalibration"]
    assert refit["method"] == "calibrated_head" and refit["n_labels"] == 3200
    slope, offset = refit["refit"]["head"]["slope"], refit["refit"]["head"]["offset"]
    # Slope and offset trade off against each other over the narrow band of logits the head
    # serves (800 random labels moved the offset by ±0.6), so the fit is judged where it is used:
    # on the served confidences its probabilities must match the truth that drew the labels.
    errors = [abs(head_truth(p, slope, offset) - head_truth(p)) for p in served]
    assert max(errors) < 0.08 and sum(errors) / len(errors) < 0.03, (slope, offset)
    assert new.head is not None and old.head is not None
    assert new.head.coef == pytest.approx([slope * c for c in old.head.coef])
    assert new.temperature == old.temperature  # the adapter's own calibration is not touched

    # The promoted version serves exactly sigmoid(slope * z + offset) of the old head's logit z
    # on the same inputs. The fake engine shifts the adapter gap by each LoRA's id, so the gap
    # of the new version is read back from its `adapter` confidence (sigmoid(gap / T)).
    from service.calibration import estimator

    item = {"question": "after the refit?", "answer": "a 3"}
    with httpx.Client(base_url=url, timeout=30) as client:
        head = client.post("/score", json={"items": [item]}).json()
        plain = client.post("/score", json={"items": [item], "method": "adapter"}).json()
    assert head["adapter"]["version"] == plain["adapter"]["version"] == "v1-recal1"
    assert head["method"] == "calibrated_head"
    p = plain["items"][0]["confidence"]
    gap = new.temperature * math.log(p / (1 - p))
    tokens = len(FakeEngine().tokenizer.encode(item["answer"], add_special_tokens=False))
    values = estimator.features(gap, estimator.answer_likelihood([-1.0] * tokens), item["answer"])
    z = estimator.head_logit(old.head, values)
    rescaled = 1 / (1 + math.exp(-(slope * z + offset)))
    assert head["items"][0]["confidence"] == pytest.approx(rescaled, abs=1e-9)


def test_labels_that_rank_the_head_backwards_write_no_version(served_head, capsys):
    url, root = served_head
    stream_head(url, 60, lambda p: head_truth(p, slope=-2.0, offset=0.0))
    assert rc.main(["--adapter", "head-unc@v1", "--window", "1d", "--url", url]) == 1
    assert "rank the head's confidences backwards" in capsys.readouterr().err
    assert not (root / "head-unc" / "v1-recal1").exists()


def test_the_adapter_method_of_a_head_version_refits_the_temperature_and_keeps_the_head(served_head, capsys):
    url, root = served_head
    with httpx.Client(base_url=url, timeout=30) as client:
        for r in range(40):
            items = [{"question": f"adapter {r} {i}?", "answer": "x"} for i in range(8)]
            body = client.post("/score", json={"items": items, "method": "adapter"}).json()
            labels = [{"id": body["id"], "index": i, "correct": (r + i) % 3 == 0} for i in range(8)]
            assert client.post("/feedback", json={"items": labels}).status_code == 200
    assert rc.main(["--adapter", "head-unc@v1", "--method", "adapter", "--window", "1d", "--url", url]) == 0
    capsys.readouterr()
    new = AdapterManifest.read(root / "head-unc" / "v1-recal1")
    old = AdapterManifest.read(root / "head-unc" / "v1")
    assert new.model_extra["recalibration"]["method"] == "adapter"
    assert new.head == old.head and new.temperature != old.temperature
    assert new.calibration_outcomes is not None and len(new.calibration_outcomes.gaps) == 320


def test_a_rescaled_head_is_the_platt_rescaling_of_the_old_heads_logit():
    from service.calibration import estimator
    from tests.unit.test_calibrated_head import HEAD

    head = estimator.HeadParams.model_validate(HEAD)
    values = estimator.features(0.8, estimator.AnswerLikelihood(-6.0, -1.5, 4), "Paris")
    z = estimator.head_logit(head, values)
    new = rc.rescaled_head(head, 1.7, -0.3)
    assert estimator.head_confidence(new, values) == pytest.approx(1 / (1 + math.exp(-(1.7 * z - 0.3))))
