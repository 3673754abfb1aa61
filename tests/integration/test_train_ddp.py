"""The same training under `torchrun` with two CPU processes (DDP over gloo).

With the global batch held fixed (2 processes x 2 examples against 1 x 4), every step
sees the same examples, and gradients are averaged across processes, so the loss curve
must match the single process's up to float summation order: measured max |diff| 4e-7,
asserted below 1e-4. Dropout is off so that both runs draw no random numbers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adapters.train import FINAL_DIR, SUMMARY_FILE, label_logit_gaps
from service.lora.files import forbidden_tensors, lora_rank, tensor_names
from tests.integration.test_train import fake_records
from tests.tiny_model import build_tiny_model, tokenizer_source

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STEPS = 8
TOLERANCE = 1e-4


def train_command(model: Path, data: Path, out: Path, *, batch: int) -> list[str]:
    return [
        "-m", "adapters.train", "--model", str(model), "--train_files", str(data), "--output_dir", str(out),
        "--per_device_train_batch_size", str(batch), "--max_steps", str(STEPS), "--warmup_steps", "1",
        "--learning_rate", "1e-3", "--lora_dropout", "0", "--kl_weight", "0.05", "--dtype", "float32",
        "--num_threads", "1", "--disable_tqdm", "true",
    ]  # fmt: skip


def run(argv: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, Path]:
    if tokenizer_source() is None:
        pytest.skip("the embedded model's tokenizer is not available locally")
    root = tmp_path_factory.mktemp("ddp")
    model = build_tiny_model(root / "tiny-llama")
    data = root / "graded.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in fake_records(40)))
    run([sys.executable, *train_command(model, data, root / "single", batch=4)])
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    run([*torchrun, *train_command(model, data, root / "ddp", batch=2), "--ddp_backend", "gloo"])
    return model, data, root / "single" / FINAL_DIR, root / "ddp" / FINAL_DIR


def curve(adapter: Path) -> list[float]:
    history = json.loads((adapter / SUMMARY_FILE).read_text())["history"]
    return [h["loss"] for h in history]


def test_two_processes_give_the_single_process_loss_curve(runs: tuple[Path, Path, Path, Path]) -> None:
    _, _, single, ddp = runs
    want, got = curve(single), curve(ddp)
    assert len(want) == len(got) == STEPS
    np.testing.assert_allclose(got, want, atol=TOLERANCE)
    assert want[0] != want[-1]  # the curve moved: equal curves are not trivially flat


def test_the_ddp_adapter_is_a_servable_lora_that_scores_like_the_single_process_one(
    runs: tuple[Path, Path, Path, Path],
) -> None:
    model, _, single, ddp = runs
    names = tensor_names(ddp)
    assert any("lora_A" in n for n in names) and any("lora_B" in n for n in names)
    assert not forbidden_tensors(names)
    assert lora_rank(ddp) == 8
    records = fake_records(8)
    np.testing.assert_allclose(
        label_logit_gaps(model, ddp, records), label_logit_gaps(model, single, records), atol=1e-4
    )
