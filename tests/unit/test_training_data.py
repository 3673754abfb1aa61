"""The training job's data path: one reader, the hash split, the MMLU guard, and a target
version checked before any training. No model is loaded: every refusal here comes first."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from adapters.cli import train as train_command
from adapters.evaluate import EvalConfig, eval_sets
from adapters.job import JobConfig, calibration_records, next_free_version
from adapters.train import training_records
from adapters.train_config import TrainConfig
from service.calibration.records import EvaluationOnlyError, read_records


def own_data(path: Path, n: int = 120) -> Path:
    """The README's own-data format: no id, no split, no kind."""
    rng = random.Random(0)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        question, answer = f"What is {a} + {b}? ({i})", str(a + b + i % 3)
        rows.append({"question": question, "answer": answer, "correct": i % 3 == 0, "source": "mine"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_records_without_a_split_get_the_hash_split(tmp_path: Path) -> None:
    records = read_records([own_data(tmp_path / "mine.jsonl")])
    counts = {split: sum(r.split == split for r in records) for split in ("train", "calibration", "test")}
    assert counts["train"] > 60 and counts["calibration"] > 5 and counts["test"] > 5, counts
    # The same file read again splits the same way (a hash, not a random draw).
    assert [r.split for r in read_records([tmp_path / "mine.jsonl"])] == [r.split for r in records]


def test_no_training_record_reaches_the_temperature_fit_or_the_report(tmp_path: Path) -> None:
    data = own_data(tmp_path / "mine.jsonl")
    config = TrainConfig(model="m", train_files=[str(data)])
    trained = {r.id for r in training_records(config)[0]}
    fitted = {r.id for r in calibration_records(config, JobConfig())}
    reported = {
        r.id for recs in eval_sets(EvalConfig(adapter=tmp_path, graded=[data])).values() for r in recs
    }
    assert trained and fitted and reported
    assert not trained & fitted and not trained & reported and not fitted & reported
    assert len(trained | fitted | reported) == 120


def mmlu_file(path: Path, split: str | None) -> Path:
    row = {"question": "Q?", "answer": "A. x", "correct": False, "source": "mmlu", "id": "mmlu:x:test:0"}
    path.write_text(json.dumps(row | ({"split": split} if split else {})) + "\n")
    return path


@pytest.mark.parametrize("split_option", [[], ["--split", "all"]])
def test_confidence_train_refuses_mmlu_records(tmp_path: Path, split_option: list[str]) -> None:
    data = mmlu_file(tmp_path / "mmlu.jsonl", "train" if not split_option else None)
    argv = ["--model", str(tmp_path / "no-model-here"), "--train_files", str(data), "--output_dir",
            str(tmp_path / "run"), "--export_root", str(tmp_path / "exported"), *split_option]  # fmt: skip
    if split_option:  # the job itself insists on the train split; training alone refuses MMLU too
        with pytest.raises(ValueError, match="split"):
            train_command(argv)
        with pytest.raises(EvaluationOnlyError, match="mmlu:x:test:0"):
            training_records(TrainConfig(model="m", train_files=[str(data)], split="all"))
    else:
        with pytest.raises(EvaluationOnlyError, match="mmlu:x:test:0"):
            train_command(argv)
    assert not (tmp_path / "run").exists()  # refused before any training


def test_an_existing_target_version_fails_before_training(tmp_path: Path) -> None:
    (tmp_path / "exported" / "mine" / "v1").mkdir(parents=True)
    argv = ["--model", str(tmp_path / "no-model-here"), "--train_files", str(own_data(tmp_path / "d.jsonl")),
            "--output_dir", str(tmp_path / "run"), "--export_root", str(tmp_path / "exported"),
            "--name", "mine", "--version", "v1"]  # fmt: skip
    with pytest.raises(FileExistsError, match="v1 already exists"):
        train_command(argv)
    assert not (tmp_path / "run").exists()


def test_the_default_version_is_the_next_free_one(tmp_path: Path) -> None:
    assert next_free_version(tmp_path / "new-name") == "v1"
    for name in ("v1", "v2", "v10", ".v11.staging", "notes"):
        (tmp_path / name).mkdir()
    assert next_free_version(tmp_path) == "v12"
