"""Splits of QA items (the hash split; MMLU keeps its own) and the every-choice records."""

from __future__ import annotations

from collections.abc import Iterable

from adapters.data.items import QAItem, mc_answer_text
from service.calibration.records import (
    DEFAULT_SPLIT,
    GradedRecord,
    Split,
    SplitConfig,
    assign_split,
    ensure_trainable,
)


def item_split(item: QAItem, config: SplitConfig = DEFAULT_SPLIT) -> Split:
    """Split of a QAItem. MMLU keeps its own split: validation/dev calibrate, test tests."""
    if item.source == "mmlu" and "mmlu_split" in item.meta:
        return "test" if item.meta["mmlu_split"] == "test" else "calibration"
    split = assign_split(item.source, item.id, config)
    if split == "train" and item.eval_only:
        return "test"
    return split


def select_split(items: Iterable[QAItem], split: Split, config: SplitConfig = DEFAULT_SPLIT) -> list[QAItem]:
    """The items of one split; asking for "train" runs the MMLU guard on the result."""
    chosen = [item for item in items if item_split(item, config) == split]
    if split == "train":
        ensure_trainable(chosen)
    return chosen


def every_choice_records(items: Iterable[QAItem], config: SplitConfig | None = None) -> list[GradedRecord]:
    """One graded record per choice of each multiple-choice item in the train split.

    Every choice's correctness is known from the gold label, so a question yields k
    graded (question, answer) pairs, exactly one correct. Trained on these, the adapter
    pays for any question-level shift of its confidence: per question the labels average
    1/k, however the question reads. A model answering at chance should give each of its
    multiple-choice answers about that base rate, and one answer per question (what
    labelling yields) is too noisy a target to teach it. Evaluation-only items and items
    outside the train split yield nothing.
    """
    config = config or SplitConfig()
    records = []
    for item in items:
        if item.kind != "mc" or item.eval_only or item_split(item, config) != "train":
            continue
        assert item.choices is not None  # QAItem guarantees choices and gold for "mc"
        for i in range(len(item.choices)):
            record = GradedRecord(
                question=item.question,
                answer=mc_answer_text(item.choices, i),
                correct=i == item.gold,
                source=item.source,
                id=f"{item.id}#choice{i}",
                kind="mc",
                split="train",
                meta={"choice": i, "gold": item.gold, "every_choice": True},
            )
            records.append(record)
    return records
