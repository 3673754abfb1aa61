"""Grading the model's answers against gold answers, without a model.

Open-ended answers are graded the SQuAD way, loosened to containment: an answer is
correct when a normalized gold alias occurs, on word boundaries, in the normalized
start of the answer. Only the start counts (first line, first few words) because a
small model that rambles through several candidates should not be credited for
mentioning the right one somewhere. Numeric answers compare as numbers, so "1,151",
"1151.0" and "$1151" all match 1151. Multiple choice compares choice indices.

Echoes never pass. A model that restates the question ("The Georgia Peach is a company
that...", "Calculate 3 - 0 = 3") shows no knowledge, yet TriviaQA's aliases often contain
a term of the question and arithmetic identities have their result in the question. So
an alias that occurs in the normalized question does not make an answer correct, and a
numeric answer whose value occurs among the question's numbers is not credited. The
cost is that such questions can only be answered wrong; the grade errs toward "wrong",
never toward crediting a copy.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable

from adapters.data import GradedRecord, QAItem

# How much of an open-ended answer is read (see the module docstring).
ANSWER_WORDS = 16

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans(dict.fromkeys(string.punctuation + "‘’“”–—", " "))
# A minus sign counts only where it cannot be a binary minus ("16-3" is 16 and 3).
_NUMBER = re.compile(r"(?<![\w.])-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|(?<![\w.])-?\d+(?:\.\d+)?|(?<!\w)-?\.\d+")
# Phrases after which the final answer follows; the last one in the answer wins.
_ANSWER_MARKERS = ("####", "answer is", "answer:")


def normalize_answer(text: str) -> str:
    """SQuAD normalization: lowercase, punctuation and articles removed, whitespace collapsed."""
    text = text.lower().translate(_PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_window(answer: str, *, max_words: int = ANSWER_WORDS) -> str:
    """The part of an answer that is graded: its first non-empty line, at most max_words words."""
    for line in answer.strip().splitlines():
        if line.strip():
            return " ".join(line.split()[:max_words])
    return ""


def _contains_words(haystack: str, needle: str) -> bool:
    """Whether normalized `needle` occurs in normalized `haystack` on word boundaries."""
    return bool(needle) and f" {needle} " in f" {haystack} "


def grade_open(
    answer: str, aliases: Iterable[str], *, question: str = "", max_words: int = ANSWER_WORDS
) -> bool:
    """True iff some normalized alias that is not part of the question occurs as whole
    words in the normalized answer window (see the module docstring on echoes)."""
    window = normalize_answer(answer_window(answer, max_words=max_words))
    asked = normalize_answer(question)
    for alias in aliases:
        norm = normalize_answer(alias)
        if _contains_words(window, norm) and not _contains_words(asked, norm):
            return True
    return False


def parse_number(text: str) -> float | None:
    """The value of a number written with optional thousands commas, sign and "$", else None."""
    cleaned = text.strip().replace(",", "").replace("$", "")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def extract_number(answer: str) -> float | None:
    """The number an answer commits to.

    Reads the first line only. If it contains an answer marker ("####", "answer is",
    "answer:"), the first number after the last marker; otherwise the last number on
    the line, since worked solutions end with their result ("5 + 91 = 96" gives 96).
    """
    line = answer_window(answer, max_words=10_000)
    lowered = line.lower()
    cut = max((lowered.rfind(m) + len(m) for m in _ANSWER_MARKERS if m in lowered), default=-1)
    if cut >= 0:
        after = _NUMBER.findall(line[cut:])
        if after:
            return parse_number(after[0])
    numbers = _NUMBER.findall(line)
    return parse_number(numbers[-1]) if numbers else None


def numbers_equal(a: float, b: float, *, rel_tol: float = 1e-6) -> bool:
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=rel_tol)


def question_numbers(question: str) -> list[float]:
    """Every number written in the question."""
    values = (parse_number(n) for n in _NUMBER.findall(question))
    return [v for v in values if v is not None]


def grade_numeric(answer: str, gold: str | float, *, question: str = "") -> bool:
    """True iff the answer's number equals the gold number and is not one of the
    question's own numbers (a copy, see the module docstring).

    Raises:
        ValueError: the gold itself is not a number (a data bug, not a wrong answer).
    """
    target = parse_number(gold) if isinstance(gold, str) else float(gold)
    if target is None:
        raise ValueError(f"gold answer {gold!r} is not a number")
    value = extract_number(answer)
    if value is None or not numbers_equal(value, target):
        return False
    return not any(numbers_equal(value, n) for n in question_numbers(question))


def grade_mc(chosen: int, gold: int) -> bool:
    return chosen == gold


def grade(item: QAItem, answer: str, *, chosen: int | None = None) -> bool:
    """Grade a model answer for any kind of item; multiple choice needs the chosen index.

    Raises:
        ValueError: a multiple-choice item graded without `chosen`.
    """
    if item.kind == "mc":
        if chosen is None or item.gold is None:
            raise ValueError(f"{item.id}: multiple-choice grading needs the chosen index")
        return grade_mc(chosen, item.gold)
    if item.kind == "numeric":
        return grade_numeric(answer, item.aliases[0], question=item.question)
    return grade_open(answer, item.aliases, question=item.question)


def regrade(record: GradedRecord) -> bool:
    """Grade a labelled open-ended or numeric record again from its stored gold
    (``meta["gold"]``), echo-safe; other records keep their label.

    Raises:
        ValueError: an open-ended or numeric record without a stored gold.
    """
    if record.kind not in ("open", "numeric"):
        return record.correct
    gold = record.meta.get("gold")
    if gold is None:
        raise ValueError(f"{record.id}: no stored gold to regrade against")
    if record.kind == "numeric":
        return grade_numeric(record.answer, str(gold), question=record.question)
    aliases = [gold] if isinstance(gold, str) else list(gold)
    return grade_open(record.answer, aliases, question=record.question)
