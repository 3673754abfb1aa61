"""Train an adapter on a tiny random model, export it, and serve it with vLLM.

The whole pipeline on CPU in about a minute: adapters.train -> adapters.export ->
service.engine.vllm_engine, checking on the way that only the adapter learns, that
the export is what the service accepts, and that vLLM reads the same label-logit gap
as transformers + peft.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from adapters.export import export_adapter
from adapters.train import CONFIG_FILE, build_peft_model, label_logit_gaps, load_base, train
from adapters.train_config import QueryTrainingArguments, TrainConfig
from service.calibration.query import QUERY_TEMPLATE_VERSION, label_tokens, query_ids
from service.lora.files import forbidden_tensors
from service.lora.manifest import AdapterManifest, weights_fingerprint
from tests.tiny_model import build_tiny_model, tokenizer_source

pytestmark = pytest.mark.integration

STEPS = 6


def fake_records(n: int = 32, *, seed: int = 0) -> list[dict]:
    """Arithmetic questions, 3 in 4 answered correctly: even a bias-only adapter can
    lower the loss, so a handful of steps must show progress."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        correct = i % 4 != 0
        records.append(
            {
                "id": f"fake-{i}",
                "source": "fake",
                "kind": "numeric",
                "split": "train" if i < n - 4 else "test",
                "question": f"What is {a} plus {b}?",
                "answer": f"The answer is {a + b if correct else a + b + rng.randint(1, 9)}.",
                "correct": correct,
                "meta": {},
            }
        )
    return records


def mean_label_loss(gaps: np.ndarray, correct: np.ndarray) -> float:
    """Binary cross-entropy of sigmoid(gap) against correctness."""
    signed = np.where(correct, gaps, -gaps)
    return float(np.mean(np.logaddexp(0.0, -signed)))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if tokenizer_source() is None:
        pytest.skip("the embedded model's tokenizer is not available locally")
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return fake_records()


@pytest.fixture(scope="module")
def config(
    tiny_model_dir: Path, records: list[dict], tmp_path_factory: pytest.TempPathFactory
) -> TrainConfig:
    data = tmp_path_factory.mktemp("data") / "graded.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    return TrainConfig(
        model=str(tiny_model_dir), train_files=[str(data)], dtype="float32", kl_weight=0.05, num_threads=2
    )


@pytest.fixture(scope="module")
def args(tmp_path_factory: pytest.TempPathFactory) -> QueryTrainingArguments:
    return QueryTrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("run") / "out"),
        per_device_train_batch_size=4,
        max_steps=STEPS,
        warmup_steps=1,
        # Ten times the default, so that six steps move the gaps well above numerical noise.
        learning_rate=1e-3,
        save_steps=3,
        disable_tqdm=True,
    )


@pytest.fixture(scope="module")
def base_gaps(tiny_model_dir: Path, records: list[dict]) -> np.ndarray:
    return label_logit_gaps(tiny_model_dir, None, records)


@pytest.fixture(scope="module")
def trained(
    config: TrainConfig, args: QueryTrainingArguments, tiny_model_dir: Path, base_gaps: np.ndarray
) -> Path:
    fingerprint = weights_fingerprint(tiny_model_dir)
    adapter = train(config, args)
    assert weights_fingerprint(tiny_model_dir) == fingerprint, "training wrote to the base model"
    return adapter


def test_only_lora_weights_are_trainable(config: TrainConfig) -> None:
    base, _ = load_base(config.model, config.dtype)
    model = build_peft_model(base, config)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable
    assert all("lora_A" in name or "lora_B" in name for name in trainable)


def test_training_moves_the_adapter_not_the_base(
    trained: Path,
    config: TrainConfig,
    args: QueryTrainingArguments,
    records: list[dict],
    base_gaps: np.ndarray,
) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(trained / "adapter_model.safetensors"))
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert lora_b and all(t.abs().max() > 0 for t in lora_b), "lora_B is still at its zero init"
    assert not forbidden_tensors(list(tensors))
    assert (Path(str(args.output_dir)) / CONFIG_FILE).is_file()
    summary = json.loads((trained / "training_summary.json").read_text())
    assert summary["template_version"] == QUERY_TEMPLATE_VERSION
    assert summary["examples"] == 28 and summary["correct"] == 21
    assert len(summary["history"]) == STEPS

    # The base model, read back from disk, scores exactly as before training.
    np.testing.assert_allclose(label_logit_gaps(config.model, None, records), base_gaps, atol=1e-6)
    tuned = label_logit_gaps(config.model, trained, records)
    assert np.abs(tuned - base_gaps).mean() > 0.05
    correct = np.array([r["correct"] for r in records])
    train_rows = np.array([r["split"] == "train" for r in records])
    before = mean_label_loss(base_gaps[train_rows], correct[train_rows])
    after = mean_label_loss(tuned[train_rows], correct[train_rows])
    assert after < before, f"label loss did not decrease: {before:.4f} -> {after:.4f}"


def test_resume_reproduces_the_uninterrupted_run(
    trained: Path, config: TrainConfig, args: QueryTrainingArguments, tmp_path: Path
) -> None:
    from safetensors.torch import load_file
    from transformers.trainer_utils import get_last_checkpoint

    # The final checkpoint (6) is the run's end; resume from the one before it.
    checkpoint = Path(str(args.output_dir)) / "checkpoint-3"
    assert get_last_checkpoint(str(args.output_dir)) is not None and checkpoint.is_dir()
    resumed_dir = tmp_path / "resumed"
    resumed_dir.mkdir()
    shutil.copytree(checkpoint, resumed_dir / checkpoint.name)
    resumed = train(config, replace(args, output_dir=str(resumed_dir)))
    summary = json.loads((resumed / "training_summary.json").read_text())
    assert [h["step"] for h in summary["history"]] == list(range(1, STEPS + 1))
    want = load_file(str(trained / "adapter_model.safetensors"))
    got = load_file(str(resumed / "adapter_model.safetensors"))
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_allclose(got[name].numpy(), want[name].numpy(), atol=1e-6, err_msg=name)


@pytest.fixture(scope="module")
def exported(trained: Path, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_adapter(
        trained,
        out_root=tmp_path_factory.mktemp("exported"),
        name="tiny-test",
        version="v1",
        base_model_dir=tiny_model_dir,
        temperature=1.5,
        training_data={"files": ["graded.jsonl"], "examples": 28},
        metrics={"ece": 0.1},
        reference_histogram={"bin_edges": [0.0, 0.5, 1.0], "counts": [3, 4]},
        calibration_outcomes={
            "split": "calibration",
            "gaps": [-1.0, 0.5, 2.0],
            "correct": [False, True, True],
        },
    )


def test_export_keeps_the_calibration_split_for_thresholds(exported: Path) -> None:
    from service.lora.manifest import AdapterManifest

    outcomes = AdapterManifest.read(exported).calibration_outcomes
    assert outcomes is not None and outcomes.split == "calibration"
    assert outcomes.gaps == [-1.0, 0.5, 2.0] and outcomes.correct == [False, True, True]


def test_export_writes_only_what_the_service_reads(exported: Path, tiny_model_dir: Path) -> None:
    from safetensors import safe_open
    from transformers import AutoTokenizer

    assert sorted(p.name for p in exported.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
        "manifest.json",
    ]
    with safe_open(str(exported / "adapter_model.safetensors"), framework="pt") as weights:
        names = list(weights.keys())
    assert names and not forbidden_tensors(names)
    config = json.loads((exported / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == tiny_model_dir.name
    manifest = AdapterManifest.read(exported)
    tokens = label_tokens(AutoTokenizer.from_pretrained(tiny_model_dir))
    assert (manifest.name, manifest.version) == ("tiny-test", "v1")
    assert manifest.base_model.weights_sha256 == weights_fingerprint(tiny_model_dir)
    assert manifest.template_version == QUERY_TEMPLATE_VERSION
    assert (manifest.label_token_ids.no, manifest.label_token_ids.yes) == (tokens.no_id, tokens.yes_id)
    assert manifest.temperature == 1.5 and manifest.created_at
    assert manifest.reference_histogram is not None and manifest.reference_histogram.counts == [3, 4]
    assert not [p for p in exported.parent.iterdir() if p.name.startswith(".")], "staging dir left behind"


def test_export_refuses_bad_names_and_overwrites(exported: Path, trained: Path, tiny_model_dir: Path) -> None:
    common = {
        "base_model_dir": tiny_model_dir,
        "temperature": 1.0,
        "training_data": {},
        "metrics": {},
        "reference_histogram": None,
    }
    out_root = exported.parent.parent
    with pytest.raises(FileExistsError):
        export_adapter(trained, out_root=out_root, name="tiny-test", version="v1", **common)
    for name, version in (("Tiny", "v2"), ("tiny", "../v2"), ("-tiny", "v2")):
        with pytest.raises(ValueError, match="must match"):
            export_adapter(trained, out_root=out_root, name=name, version=version, **common)


async def test_vllm_serves_the_exported_adapter_like_peft(
    exported: Path, tiny_model_dir: Path, records: list[dict]
) -> None:
    from transformers import AutoTokenizer

    from service.engine.base import LoRA
    from service.engine.vllm_engine import VLLMEngine

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokens = label_tokens(tokenizer)
    sample = records[:4]
    want_base = label_logit_gaps(tiny_model_dir, None, sample)
    want_tuned = label_logit_gaps(tiny_model_dir, exported, sample)

    # float32 like the HF reference: vLLM on CPU would otherwise downcast to bf16, whose
    # rounding alone moves a gap by ~1e-2.
    engine = VLLMEngine(
        str(tiny_model_dir),
        max_model_len=512,
        max_loras=1,
        max_lora_rank=8,
        kv_cache_gib=0.25,
        dtype="float32",
    )
    await engine.start()
    try:
        lora = LoRA("tiny-test", 1, exported)
        got_base, got_tuned = [], []
        for record in sample:
            ids = query_ids(tokenizer, [{"role": "user", "content": record["question"]}], record["answer"])
            no, yes = await engine.next_token_logprobs(ids, [tokens.no_id, tokens.yes_id])
            got_base.append(yes - no)
            no, yes = await engine.next_token_logprobs(ids, [tokens.no_id, tokens.yes_id], lora=lora)
            got_tuned.append(yes - no)
    finally:
        engine.shutdown()
    assert np.abs(np.array(got_tuned) - np.array(got_base)).min() > 1e-2, "the adapter changed nothing"
    np.testing.assert_allclose(got_base, want_base, atol=1e-2)
    np.testing.assert_allclose(got_tuned, want_tuned, atol=1e-2)


def test_early_stopping_keeps_the_best_calibration_checkpoint(
    tiny_model_dir: Path, records: list[dict], tmp_path: Path
) -> None:
    """A learning rate far too high makes the calibration loss worse after the first
    evaluation: training stops after `patience` worse evaluations, well before max_steps,
    and the saved adapter is the best evaluated checkpoint."""
    rows = [{**r, "split": "calibration" if i % 4 == 0 else "train"} for i, r in enumerate(records)]
    data = tmp_path / "graded.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TrainConfig(
        model=str(tiny_model_dir), train_files=[str(data)], dtype="float32", early_stopping_patience=2
    )
    args = QueryTrainingArguments(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=40, warmup_steps=0,
        learning_rate=0.5, lr_scheduler_type="constant", eval_steps=1, save_steps=1, disable_tqdm=True,
    )  # fmt: skip
    adapter = train(config, args)
    summary = json.loads((adapter / "training_summary.json").read_text())
    losses = [e["eval_loss"] for e in summary["evaluations"]]
    assert summary["steps"] < 40 and len(losses) == summary["steps"]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert losses[best + 1 :] and all(loss >= losses[best] for loss in losses[best + 1 :])
    assert summary["best_checkpoint"].endswith(f"checkpoint-{best + 1}")
    from safetensors.torch import load_file

    kept = load_file(str(adapter / "adapter_model.safetensors"))
    best_weights = load_file(str(Path(summary["best_checkpoint"]) / "adapter_model.safetensors"))
    assert kept.keys() == best_weights.keys()
    assert all(bool((kept[k] == best_weights[k]).all()) for k in kept)
