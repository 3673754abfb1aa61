"""A question with its gold answer (`QAItem`), before the model has answered it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from service.calibration.records import EVAL_ONLY_SOURCES, KINDS, Kind

LETTERS = "ABCDEFGHIJ"


@dataclass
class QAItem:
    """One question with its gold answer, before the model has answered it.

    `question` is the complete user message (for multiple choice it includes the
    lettered choices), so the confidence query sees exactly what the model saw.
    """

    id: str
    source: str
    kind: Kind
    question: str
    choices: list[str] | None = None
    gold: int | None = None
    aliases: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    eval_only: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.id}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "mc":
            if not self.choices or self.gold is None or not 0 <= self.gold < len(self.choices):
                raise ValueError(f"{self.id}: multiple choice needs choices and a gold index inside them")
        elif not self.aliases:
            raise ValueError(f"{self.id}: {self.kind} items need at least one gold alias")
        if self.source in EVAL_ONLY_SOURCES:
            self.eval_only = True


def format_mc_question(stem: str, choices: Sequence[str]) -> str:
    """The user message for a multiple-choice item: the stem, then one lettered choice a line."""
    lines = [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices)]
    return "\n".join([stem.strip(), *lines])


def mc_answer_text(choices: Sequence[str], index: int) -> str:
    """The proposed-answer string for a chosen option, e.g. "B. fish"."""
    return f"{LETTERS[index]}. {choices[index]}"
