"""The README's own-data example end to end: records without a split train, fit and export.

`confidence train` runs as a user would run it (a subprocess of the CLI) on the tiny model:
the hash split gives train, calibration and test parts; the Trainer evaluates on the
calibration part while training; the temperature is fitted through vLLM on that part; the
export passes the service's own inspection; and the next run picks the next free version.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.calibration.records import read_records
from service.lora.files import BaseModelInfo, inspect_adapter
from service.lora.manifest import AdapterManifest, weights_fingerprint
from tests.tiny_model import build_tiny_model, tokenizer_source
from tests.unit.test_training_data import own_data

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def confidence_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        # The tiny model's 1024 positions are below the offline engine's 2048-token context.
        "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "OMP_NUM_THREADS": "1",
    }


def confidence(*argv: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service.cli", *argv]
    return subprocess.run(
        command, cwd=REPO, env=confidence_env(), capture_output=True, text=True, timeout=1200
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    if tokenizer_source() is None:
        pytest.skip("the embedded model's tokenizer is not available locally")
    root = tmp_path_factory.mktemp("own")
    model = build_tiny_model(root / "tiny-llama")
    data = own_data(root / "mine.jsonl")
    # The README's command, plus what keeps a CPU run short.
    done = confidence(
        "train", "--model", str(model), "--train_files", str(data), "--name", "mine",
        "--export_root", str(root / "exported"), "--runs_root", str(root / "runs"),
        "--max_steps", "4", "--eval_steps", "2", "--per_device_train_batch_size", "8", "--dtype", "float32",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return model, data, root


def test_own_records_train_fit_and_export_a_servable_version(exported: tuple[Path, Path, Path]) -> None:
    from transformers import AutoTokenizer

    from service.calibration.query import label_tokens

    model, data, root = exported
    version = root / "exported" / "mine" / "v1"  # the first free version
    base = BaseModelInfo(
        weights_sha256=weights_fingerprint(model), labels=label_tokens(AutoTokenizer.from_pretrained(model))
    )
    manifest = inspect_adapter(version, base)
    assert manifest == AdapterManifest.read(version)
    calibration = read_records([data], split="calibration")
    assert manifest.metrics["calibration_split"]["lora_prompt"]["n"] == len(calibration)
    assert manifest.temperature > 0 and manifest.reference_histogram is not None
    assert sum(manifest.reference_histogram.counts) == len(calibration)
    trained = manifest.training_data["per_source"]["mine"]["n"]
    assert trained == len(read_records([data], split="train"))
    summary = json.loads((root / "runs" / "mine-v1" / "adapter" / "training_summary.json").read_text())
    assert [e["step"] for e in summary["evaluations"]] == [2, 4]  # evaluated on the calibration split
    assert {"eval_ece", "eval_auroc", "eval_brier"} <= summary["evaluations"][-1].keys()


def test_a_taken_version_fails_before_training(exported: tuple[Path, Path, Path]) -> None:
    model, data, root = exported
    done = confidence(
        "train", "--model", str(model), "--train_files", str(data), "--name", "mine", "--version", "v1",
        "--export_root", str(root / "exported"), "--runs_root", str(root / "runs2"),
    )  # fmt: skip
    assert done.returncode != 0 and "v1 already exists" in done.stderr
    assert not (root / "runs2").exists()


def test_the_job_under_torchrun_trains_on_both_processes_and_exports_once(
    exported: tuple[Path, Path, Path],
) -> None:
    """What the Kubernetes training Job runs, on two CPU processes: both train (DDP over
    gloo), the main one leaves the process group, fits T through vLLM and exports once."""
    model, data, root = exported
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "service.cli"]
    done = subprocess.run(
        [sys.executable, *torchrun, "train", "--model", str(model), "--train_files", str(data),
         "--name", "mine", "--export_root", str(root / "exported"), "--runs_root", str(root / "ddp-runs"),
         "--max_steps", "2",
         "--eval_strategy", "no", "--per_device_train_batch_size", "4", "--dtype", "float32",
         "--ddp_backend", "gloo"],
        cwd=REPO, env=confidence_env(), capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    printed = [line for line in done.stdout.splitlines() if line.startswith(str(root))]
    assert printed == [str(root / "exported" / "mine" / "v2")]  # by the main process only
    manifest = AdapterManifest.read(root / "exported" / "mine" / "v2")
    assert manifest.training_data["training"]["steps"] == 2
