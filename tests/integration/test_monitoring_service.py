"""Calibration monitoring on the real service: `confidence serve` on real vLLM (tiny model,
random adapters) in a subprocess. Traffic and synthetic feedback whose accuracy differs from
the confidences; the recording rules evaluated by promtool on the scraped /metrics must give
the hand-computed ECE; then the service is SIGKILLed right after its last acknowledgement and
restarted on the same store, where every acknowledged label must still be."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import psutil
import pytest

from adapters.data import read_graded_jsonl
from service.lora.manifest import AdapterManifest, ReferenceHistogram
from tests.e2e.conftest import free_port, wait_ready
from tests.monitoring_helpers import assert_rules_give, hand_calibration, series_from_scrapes

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def served_root(adapter_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The random adapters, alpha with a reference histogram (as the training job writes)."""
    root = tmp_path_factory.mktemp("monitored") / "adapters"
    shutil.copytree(adapter_root, root)
    manifest = AdapterManifest.read(root / "alpha" / "v1")
    manifest.reference_histogram = ReferenceHistogram(bin_edges=[k / 10 for k in range(11)], counts=[1] * 10)
    manifest.write(root / "alpha" / "v1")
    return root


def service_env(tiny_model: Path, adapters: Path, db: Path, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CONFIDENCE_MODEL": str(tiny_model),
        "CONFIDENCE_ADAPTER_ROOT": str(adapters),
        "CONFIDENCE_DEFAULT_ADAPTER": "alpha",
        "CONFIDENCE_MAX_MODEL_LEN": "512",
        "CONFIDENCE_KV_CACHE_GIB": "0.25",
        "CONFIDENCE_MAX_LORAS": "2",
        "CONFIDENCE_MAX_LORA_RANK": "8",
        "CONFIDENCE_DEFAULT_MAX_TOKENS": "8",
        "CONFIDENCE_FEEDBACK_DB_PATH": str(db),
        "CONFIDENCE_FEEDBACK_STORE_PROMPTS": "true",
        "CONFIDENCE_HOST": "127.0.0.1",
        "CONFIDENCE_PORT": str(port),
    }


@contextmanager
def running_service(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`confidence serve` in its own process group; on exit the whole group is stopped
    (and any of its processes that outlive it are killed by pid)."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{env['CONFIDENCE_PORT']}"
    try:
        wait_ready(base, proc, log_path)
        yield base, proc
    finally:
        kill_group(proc, signal.SIGTERM)


def kill_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the service and its engine processes, wait, and SIGKILL any that remain."""
    try:
        family = [proc.pid, *(c.pid for c in psutil.Process(proc.pid).children(recursive=True))]
    except psutil.NoSuchProcess:
        family = [proc.pid]
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
    for pid in family:
        try:
            psutil.Process(pid).wait(timeout=30)
        except psutil.NoSuchProcess:
            continue
        except psutil.TimeoutExpired:
            os.kill(pid, signal.SIGKILL)


def synthetic_truth(k: int) -> bool:
    """Right one time in three, whatever the confidence says."""
    return k % 3 == 0


def test_calibration_monitoring_end_to_end(tiny_model, served_root, tmp_path):
    db = tmp_path / "feedback.sqlite3"
    env = service_env(tiny_model, served_root, db, free_port())
    questions = ["What is 2 + 2?", "Capital of Peru?", "Who wrote Hamlet?", "Boiling point of water in C?"]
    with running_service(env, tmp_path / "serve-1.log") as (base, proc):
        http = httpx.Client(base_url=base, timeout=120)
        before = http.get("/metrics").text
        served = []  # (id, index, confidence, question, answer)
        for q in questions:
            body = http.post("/generate", json={"prompt": q}).json()
            served.append((body["id"], None, body["confidence"], q, body["text"]))
        items = [
            {"question": q, "answer": answer} for q in questions for answer in ("4", "Lima", "I do not know")
        ]
        body = http.post("/score", json={"items": items}).json()
        for it in body["items"]:
            asked = items[it["index"]]
            served.append((body["id"], it["index"], it["confidence"], asked["question"], asked["answer"]))
        feedback = [
            {"id": rid, "index": index, "correct": synthetic_truth(k)}
            for k, (rid, index, *_) in enumerate(served)
        ]
        acks = [http.post("/feedback", json=label) for label in feedback[:-4]]
        acks.append(http.post("/feedback", json={"items": feedback[-4:]}))
        after = http.get("/metrics").text
        assert [a.json()["recorded"] for a in acks] == [1] * (len(feedback) - 4) + [4]
        kill_group(proc, signal.SIGKILL)  # right after the last acknowledgement
        assert proc.returncode == -signal.SIGKILL

    pairs = [(confidence, int(synthetic_truth(k))) for k, (_, _, confidence, *_) in enumerate(served)]
    ece, brier, accuracy = hand_calibration(pairs)
    print(f"n={len(pairs)} hand ECE={ece:.6f} Brier={brier:.6f} accuracy={accuracy:.4f}")
    series, end = series_from_scrapes({"replica-1": [before, after]})
    expected = {
        "adapter_version_method:confidence_ece:1h": ece,
        "adapter_version_method:confidence_brier:1h": brier,
        "adapter_version_method:confidence_accuracy:1h": accuracy,
    }
    assert_rules_give(
        tmp_path, series, end, expected, {"adapter": "alpha", "version": "v1", "method": "adapter"}
    )
    assert 'confidence_psi{adapter="alpha",method="adapter",version="v1"}' in after

    env["CONFIDENCE_PORT"] = str(free_port())
    with running_service(env, tmp_path / "serve-2.log") as (base, _):
        http = httpx.Client(base_url=base, timeout=120)
        again = http.post("/feedback", json={"items": feedback})
        assert again.json() == {"recorded": 0, "duplicates": len(feedback)}  # every label survived
        flipped = {**feedback[0], "correct": not feedback[0]["correct"]}
        assert http.post("/feedback", json=flipped).status_code == 409
        report = http.get("/calibration", params={"window": "1h"}).json()
        assert report["n"] == len(pairs) and report["ece"] == pytest.approx(ece)

    out = tmp_path / "feedback.jsonl"
    export = subprocess.run(
        [sys.executable, "-m", "service.cli", "feedback", "export", "--out", str(out)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert export.returncode == 0, export.stderr
    records = read_graded_jsonl(out)
    assert sorted((r.question, r.answer, r.correct) for r in records) == sorted(
        (q, a, synthetic_truth(k)) for k, (_, _, _, q, a) in enumerate(served)
    )
    assert json.loads(out.read_text().splitlines()[0])["source"] == "feedback/alpha"
