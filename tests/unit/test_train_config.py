"""The training job's pure pieces: source selection, oversampling and their argument parsing."""

import json
from pathlib import Path

import numpy as np
import pytest

from adapters.data import EvaluationOnlyError, GradedRecord
from adapters.job import JobConfig, calibration_records, training_data_summary
from adapters.train import TrainConfig, drop_sources, every_choice_training_records, oversample, parse_repeats


def test_parse_repeats_reads_source_factors() -> None:
    assert parse_repeats(["arc_easy=3", " sciq = 2"]) == {"arc_easy": 3, "sciq": 2}


@pytest.mark.parametrize("spec", ["arc_easy", "=3", "arc_easy=0", "arc_easy=-1", "arc_easy=x"])
def test_parse_repeats_rejects_bad_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="SOURCE=N"):
        parse_repeats([spec])


def test_every_choice_refuses_mmlu_and_unknown_sources_before_loading_data(tmp_path: Path) -> None:
    def config(spec: str) -> TrainConfig:
        return TrainConfig(
            model="m", train_files=["t.jsonl"], every_choice=[spec], data_dir=str(tmp_path / "none")
        )

    with pytest.raises(EvaluationOnlyError, match="mmlu_test"):
        every_choice_training_records(config("mmlu_test=10"))
    with pytest.raises(ValueError, match="unknown source 'squad'"):
        every_choice_training_records(config("squad=10"))
    with pytest.raises(ValueError, match="every_choice: expected SOURCE=N"):
        config("arc_easy")


def record(i: int, source: str | None) -> GradedRecord:
    return GradedRecord(question=f"q{i}", answer="a", correct=True, source=source, id=str(i))


def test_oversample_repeats_only_listed_sources_in_order() -> None:
    records = [record(0, "triviaqa"), record(1, "arc_easy"), record(2, "nq_open")]
    out = oversample(records, {"arc_easy": 3})
    assert [r.id for r in out] == ["0", "1", "1", "1", "2"]


def test_oversample_without_repeats_is_identity() -> None:
    records = [record(0, None), record(1, "x")]
    assert oversample(records, {}) == records


def test_drop_sources_keeps_unlisted_and_sourceless_records() -> None:
    records = [record(0, "boolq"), record(1, None), record(2, "arc_easy")]
    assert [r.id for r in drop_sources(records, ["boolq", "piqa"])] == ["1", "2"]


def test_excluded_sources_leave_the_temperature_fit_too(tmp_path: Path) -> None:
    graded = tmp_path / "graded.jsonl"
    rows = [
        {
            "question": "q1",
            "answer": "a",
            "correct": True,
            "source": "boolq",
            "split": "calibration",
            "id": "1",
        },
        {
            "question": "q2",
            "answer": "a",
            "correct": False,
            "source": "arc_easy",
            "split": "calibration",
            "id": "2",
        },
        {"question": "q3", "answer": "a", "correct": False, "source": "boolq", "split": "train", "id": "3"},
    ]
    graded.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = TrainConfig(model="m", train_files=[str(graded)], exclude_sources=["boolq"])
    assert [r.id for r in calibration_records(config, JobConfig())] == ["2"]
    assert training_data_summary(config, tmp_path)["per_source"] == {}


def test_per_source_calibration_reports_each_source_apart() -> None:
    from adapters.data import GradedRecord
    from adapters.job import per_source_calibration

    def rec(i: int, source: str, correct: bool) -> GradedRecord:
        return GradedRecord(question="q", answer="a", correct=correct, source=source, id=str(i))

    records = [
        rec(0, "mmlu", True),
        rec(1, "mmlu", False),
        rec(2, "triviaqa", False),
        rec(3, "triviaqa", False),
    ]
    y = np.array([1.0, 0.0, 0.0, 0.0])
    out = per_source_calibration(records, np.array([0.5, 0.5, 0.1, 0.3]), y)
    assert out["mmlu"] == {"n": 2, "accuracy": 0.5, "mean_confidence": 0.5, "ece": 0.0}
    assert out["triviaqa"]["accuracy"] == 0.0
    assert out["triviaqa"]["mean_confidence"] == pytest.approx(0.2)
    assert out["triviaqa"]["ece"] == pytest.approx(0.2)
