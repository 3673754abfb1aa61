"""Pure parts of the evaluation: verbalized parsing, answer agreement, eval-set selection,
and the engine-driven readers on the fake engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from adapters import scoring
from adapters.data import GradedRecord
from adapters.evaluate import EvalConfig, eval_sets
from service.calibration import query as cq
from tests.fake_engine import FakeEngine, fake_gap


@pytest.mark.parametrize(
    ("text", "expected"),
    [("85", 0.85), ("85%", 0.85), (" I'd say 0.3", 0.3), ("100", 1.0), ("250", 1.0), ("no idea", None)],
)
def test_parse_percentage(text, expected):
    assert scoring.parse_percentage(text) == (pytest.approx(expected) if expected is not None else None)


def test_same_answer_compares_numbers_and_normalized_text():
    assert scoring.same_answer("numeric", "The answer is 12.0", "12")
    assert not scoring.same_answer("numeric", "13", "12")
    assert scoring.same_answer("open", "The Eiffel Tower.", "eiffel tower")
    assert not scoring.same_answer("open", "Paris", "Lyon")


def test_same_answer_accepts_rephrasings_but_not_different_answers():
    assert scoring.same_answer("open", "It is Paris, France.", "Paris")
    assert scoring.same_answer("open", "George Washington", "President George Washington")
    assert not scoring.same_answer("open", "George Washington", "Abraham Lincoln")
    assert not scoring.same_answer("open", "", "Paris")
    # Only the graded window counts: a later line does not make two answers agree.
    assert not scoring.same_answer("open", "Lyon\nParis is the capital", "Paris")
    assert scoring.token_f1("a b c", "a b d") == pytest.approx(2 / 3)


def record(i: int, **kw) -> dict:
    return {"id": f"r{i}", "question": f"q{i}", "answer": "a", "correct": i % 2 == 0, **kw}


def test_eval_sets_use_only_held_out_questions(tmp_path):
    graded = tmp_path / "mix.jsonl"
    rows = [
        record(0, source="triviaqa", kind="open", split="test"),
        record(1, source="triviaqa", kind="open", split="train"),
        record(2, source="gsm8k", kind="numeric", split="test"),
        record(3, source="arc_easy", kind="mc", split="test"),
        record(4, source="gsm8k", kind="numeric", split="calibration"),
    ]
    graded.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text(
        "\n".join(
            json.dumps(record(i, source="mmlu", kind="mc", split="test", meta={"mmlu_split": s}))
            for i, s in ((10, "test"), (11, "validation"))
        )
        + "\n"
    )
    sets = eval_sets(EvalConfig(adapter=tmp_path, graded=[graded], mmlu=mmlu))
    ids = {name: [r.id for r in recs] for name, recs in sets.items()}
    assert ids == {
        "mmlu_test": ["r10"],
        "open_ended_test": ["r0", "r2"],
        "gsm8k_test": ["r2"],
        "triviaqa_test": ["r0"],
        "mc_test": ["r3"],
    }


def test_eval_sets_cap_open_ended_and_mmlu_separately(tmp_path):
    graded = tmp_path / "mix.jsonl"
    rows = [record(i, source="triviaqa", kind="open", split="test") for i in range(6)]
    graded.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    mmlu = tmp_path / "mmlu.jsonl"
    mmlu.write_text(
        "\n".join(json.dumps(record(i, source="mmlu", kind="mc", split="test")) for i in range(10, 20))
    )
    whole = eval_sets(EvalConfig(adapter=tmp_path, graded=[graded], mmlu=mmlu, max_per_set=2))
    assert len(whole["open_ended_test"]) == 2 and len(whole["mmlu_test"]) == 10
    capped = eval_sets(EvalConfig(adapter=tmp_path, graded=[graded], mmlu=mmlu, max_per_set=2, max_mmlu=3))
    assert len(capped["mmlu_test"]) == 3
    assert {r.id for r in capped["mmlu_test"]} < {r.id for r in whole["mmlu_test"]}


async def test_query_gaps_read_the_served_query():
    engine = FakeEngine()
    records = [GradedRecord(question="2+2?", answer=a, correct=True, source="x", id=a) for a in ("4", "5")]
    gaps = await scoring.query_gaps(engine, records, None)
    expected = [
        fake_gap(cq.query_ids(engine.tokenizer, [{"role": "user", "content": "2+2?"}], a), None)
        for a in ("4", "5")
    ]
    np.testing.assert_allclose(gaps, expected)


async def test_self_consistency_for_multiple_choice_follows_choice_likelihoods():
    engine = FakeEngine()
    sure = GradedRecord(
        question="q",
        answer="A. x",
        correct=True,
        source="arc_easy",
        kind="mc",
        id="s",
        meta={"choice": 0, "choice_scores": [0.0, -30.0, -30.0]},
    )
    unsure = GradedRecord(
        question="q",
        answer="A. x",
        correct=True,
        source="arc_easy",
        kind="mc",
        id="u",
        meta={"choice": 0, "choice_scores": [0.0, 0.0, 0.0, 0.0]},
    )
    values = await scoring.self_consistency(engine, [sure, unsure], k=200, seed=0)
    assert values[0] == 1.0
    assert 0.15 < values[1] < 0.35


async def test_evaluation_writes_the_report_and_leaves_the_version_directory_alone(tmp_path):
    from adapters.evaluate import evaluate_async
    from service.lora.manifest import AdapterManifest
    from tests.unit.conftest import write_adapter

    adapter = write_adapter(tmp_path / "root", "unc", "v1", metrics={"temperature_fit": {"temperature": 1.5}})
    manifest_before = (adapter / "manifest.json").read_bytes()
    graded = tmp_path / "mix.jsonl"
    rows = [record(i, source="triviaqa" if i % 2 else "gsm8k", kind="open", split="test") for i in range(8)]
    graded.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = EvalConfig(
        adapter=adapter, graded=[graded], report_dir=tmp_path / "report", baselines=False, n_boot=20
    )
    report = await evaluate_async(config, FakeEngine())
    # open_ended_test plus its two per-source views: 16 rows in the report, 8 distinct items.
    assert sum(m["lora_prompt"]["n"] for m in report["eval_sets"].values()) == 16
    # The version directory is written once, at export: evaluation leaves it as it was.
    assert (adapter / "manifest.json").read_bytes() == manifest_before
    assert AdapterManifest.read(adapter).metrics == {"temperature_fit": {"temperature": 1.5}}
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["open_ended_test"]["lora_prompt"]["n"] == 8
    assert (tmp_path / "report" / "report.md").exists()
    # Per-item predictions: each held-out item once, with every method's confidence,
    # and they reproduce the report's accuracy.
    lines = [json.loads(x) for x in (tmp_path / "report" / "predictions.jsonl").read_text().splitlines()]
    assert sorted(x["id"] for x in lines) == sorted(r["id"] for r in rows)
    assert all(0.0 <= x["lora_prompt"] <= 1.0 and 0.0 <= x["zero_shot"] <= 1.0 for x in lines)
    accuracy = report["eval_sets"]["open_ended_test"]["lora_prompt"]["accuracy"]["value"]
    assert accuracy == sum(x["correct"] for x in lines) / len(lines)
