"""Labelling logic on a scripted engine: which choice is picked, what is written, resuming."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from adapters import labelling
from adapters.data import QAItem, read_graded_jsonl
from service.engine.base import Completion, GenerationResult, LoRA, SamplingOptions
from tests.fake_engine import FakeEngine


class ScriptedEngine(FakeEngine):
    """Choice tokens listed in `likely` score -0.1 each, every other token -2.0; the
    generated answer is looked up by the question's last word."""

    def __init__(self, *, likely: Sequence[str] = (), answers: dict[str, str] | None = None, **kw) -> None:
        super().__init__(**kw)
        self.likely = set(likely)
        self.answers = answers or {}
        self.prompts: list[list[int]] = []

    def _word(self, token_id: int) -> str:
        return next(w for w, i in self.tokenizer.vocab.items() if i == token_id).strip()

    async def prompt_logprobs(self, prompt_ids, *, start: int, lora: LoRA | None = None) -> list[float]:
        await self._enter("prompt_logprobs", lora)
        return [-0.1 if self._word(t) in self.likely else -2.0 for t in prompt_ids[start:]]

    async def generate(self, prompt_ids, options: SamplingOptions, *, lora=None) -> GenerationResult:
        await self._enter("generate", lora)
        self.prompts.append(list(prompt_ids))
        last_question_word = self._word(prompt_ids[-2])  # before the plain "Assistant:" cue
        text = self.answers.get(last_question_word, "no idea")
        return GenerationResult(len(prompt_ids), [Completion(f" {text} ", "stop", 2)])


def mc(i: int, choices: list[str], gold: int) -> QAItem:
    return QAItem(
        id=f"arc_easy:{i}",
        source="arc_easy",
        kind="mc",
        question=f"Question {i}?",
        choices=choices,
        gold=gold,
    )


def open_item(i: int, alias: str, source: str = "triviaqa") -> QAItem:
    kind = "numeric" if source == "arithmetic" else "open"
    return QAItem(id=f"{source}:{i}", source=source, kind=kind, question=f"Ask q{i}", aliases=[alias])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


async def test_mc_answer_is_the_most_likely_choice_text_not_a_letter(tmp_path):
    engine = ScriptedEngine(likely={"blue"})
    items = [mc(1, ["red", "blue sky", "green"], gold=1), mc(2, ["blue", "red"], gold=1)]
    out = tmp_path / "g.jsonl"
    await labelling.label_items(engine, items, out)
    records = lines(out)
    # mean per token: "blue sky" = (-0.1 - 2.0) / 2 beats "red" = -2.0
    assert [(r["answer"], r["correct"]) for r in records] == [("B. blue sky", True), ("A. blue", False)]
    assert records[0]["question"] == "Question 1?"
    assert records[0]["meta"]["choice"] == 1 and records[0]["meta"]["gold"] == 1


async def test_sum_scoring_prefers_short_choices(tmp_path):
    engine = ScriptedEngine(likely={"blue"})
    config = labelling.LabelConfig(mc_score="sum")
    await labelling.label_items(
        engine, [mc(1, ["red", "blue sky sky"], gold=1)], tmp_path / "g.jsonl", config=config
    )
    assert lines(tmp_path / "g.jsonl")[0]["answer"] == "A. red"


async def test_open_records_hold_exact_question_and_stripped_answer(tmp_path):
    engine = ScriptedEngine(answers={"q1": "Paris", "q2": "Lyon"})
    out = tmp_path / "g.jsonl"
    summary = await labelling.label_items(engine, [open_item(1, "Paris"), open_item(2, "Paris")], out)
    records = lines(out)
    assert [(r["question"], r["answer"], r["correct"]) for r in records] == [
        ("Ask q1", "Paris", True),
        ("Ask q2", "Lyon", False),
    ]
    assert set(records[0]) == {"id", "source", "kind", "split", "question", "answer", "correct", "meta"}
    assert records[0]["split"] in ("train", "calibration", "test")
    assert summary["by_source"]["triviaqa"]["count"] == 2
    assert summary["by_source"]["triviaqa"]["accuracy"] == 0.5
    assert json.loads(labelling.summary_path(out).read_text())["total"]["correct"] == 1
    assert read_graded_jsonl(out)[0].answer == "Paris"  # the output is valid graded JSONL


async def test_numeric_items_get_worked_examples_outside_the_record(tmp_path):
    engine = ScriptedEngine(answers={"q1": "96"})
    out = tmp_path / "g.jsonl"
    await labelling.label_items(engine, [open_item(1, "96", source="arithmetic")], out)
    prompt_words = [engine._word(t) for t in engine.prompts[0]]
    assert "47" in prompt_words  # a few-shot answer is in the prompt
    (record,) = lines(out)
    assert record["question"] == "Ask q1" and record["correct"] is True


async def test_resume_skips_done_ids_and_repairs_a_torn_line(tmp_path):
    engine = ScriptedEngine(answers={"q1": "Paris"})
    out = tmp_path / "g.jsonl"
    items = [open_item(i, "Paris") for i in range(1, 4)]
    await labelling.label_items(engine, items[:2], out)
    with out.open("a") as handle:
        handle.write('{"id": "triviaqa:3", "sour')  # killed mid-write
    engine.calls.clear()
    summary = await labelling.label_items(engine, items, out, chunk_size=1)
    assert [r["id"] for r in lines(out)] == ["triviaqa:1", "triviaqa:2", "triviaqa:3"]
    assert len(engine.calls) == 1 and summary["last_run"]["items"] == 1


async def test_resume_reads_records_holding_unicode_line_separators(tmp_path):
    engine = ScriptedEngine()
    out = tmp_path / "g.jsonl"
    odd = QAItem(
        id="triviaqa:1", source="triviaqa", kind="open", question="Ask q1\u2028part two", aliases=["x"]
    )
    await labelling.label_items(engine, [odd], out)
    assert "\u2028" in out.read_text(encoding="utf-8")  # written raw, not escaped
    assert labelling.load_done_ids(out) == {"triviaqa:1"}
    engine.calls.clear()
    await labelling.label_items(engine, [odd, open_item(2, "x")], out)
    assert len(engine.calls) == 1


async def test_chunks_are_submitted_concurrently(tmp_path):
    engine = ScriptedEngine()
    items = [open_item(i, "x") for i in range(10)]
    await labelling.label_items(engine, items, tmp_path / "g.jsonl", chunk_size=5)
    assert engine.max_in_flight == 5


async def test_prompts_longer_than_the_context_are_skipped(tmp_path):
    engine = ScriptedEngine(max_model_len=40)  # 32 answer tokens + a short prompt
    long_item = QAItem(id="triviaqa:9", source="triviaqa", kind="open", question="word " * 30, aliases=["x"])
    summary = await labelling.label_items(engine, [long_item, open_item(1, "x")], tmp_path / "g.jsonl")
    assert summary["last_run"]["skipped"] == {"too long": 1}
    assert [r["id"] for r in lines(tmp_path / "g.jsonl")] == ["triviaqa:1"]


def test_cli_arguments_build_a_config(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    labelling.add_arguments(parser)
    args = parser.parse_args(
        [
            "--out",
            str(tmp_path / "x.jsonl"),
            "--sources",
            "triviaqa, gsm8k",
            "--limit",
            "triviaqa=10",
            "--limit",
            "gsm8k=-1",
            "--splits",
            "test",
        ]
    )
    config = labelling.config_from_args(args)
    assert config.sources == ("triviaqa", "gsm8k") and config.splits == ("test",)
    assert config.limits == {"triviaqa": 10, "gsm8k": -1}
    with pytest.raises(ValueError, match="SOURCE=N"):
        labelling.parse_limits(["triviaqa:10"])
    with pytest.raises(ValueError, match="unknown"):
        labelling.LabelConfig(splits=("dev",))


async def test_no_choices_format_asks_the_bare_question_and_answers_the_choice_text(tmp_path):
    from adapters.data import format_mc_question

    engine = ScriptedEngine(likely={"blue"})
    choices = ["red", "blue", "green"]
    item = QAItem(
        id="arc_easy:7",
        source="arc_easy",
        kind="mc",
        question=format_mc_question("Sky colour?", choices),
        choices=choices,
        gold=1,
    )
    config = labelling.LabelConfig(mc_score="sum", mc_format="no_choices")
    await labelling.label_items(engine, [item], tmp_path / "g.jsonl", config=config)
    (record,) = lines(tmp_path / "g.jsonl")
    assert (record["question"], record["answer"], record["correct"]) == ("Sky colour?", "blue", True)
    assert record["meta"]["mc_format"] == "no_choices"


def test_mc_format_is_validated():
    with pytest.raises(ValueError, match="mc_format"):
        labelling.LabelConfig(mc_format="letters")  # type: ignore[arg-type]
