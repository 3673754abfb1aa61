"""Grading of model answers against gold answers, on hand-written cases."""

import pytest

from adapters import grading
from adapters.data import QAItem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Beatles!", "beatles"),
        ("  Sunset   Blvd. ", "sunset blvd"),
        ("An apple, a day", "apple day"),
        ("Theatre", "theatre"),  # "the" inside a word is not an article
        ("Rock-and-roll", "rock and roll"),
        ("“Quoted” — text", "quoted text"),
    ],
)
def test_normalize_answer_is_squad_style(text, expected):
    assert grading.normalize_answer(text) == expected


@pytest.mark.parametrize(
    ("answer", "aliases", "expected"),
    [
        ("Sunset Boulevard", ["Sunset Boulevard"], True),
        ("It premiered as Sunset Blvd.", ["Sunset Boulevard", "Sunset Blvd"], True),
        ("the beatles", ["The Beatles"], True),
        ("Beatles", ["The Beatles"], True),  # articles are dropped on both sides
        ("Marshall", ["Mars"], False),  # whole words only
        ("Venus", ["Mars"], False),
        ("", ["Mars"], False),
        ("Mars", ["", "  ", "Mars"], True),  # empty aliases never match everything
        ("Mars", ["..."], False),  # an alias that normalizes to nothing is skipped
        ("I think\nMars", ["Mars"], False),  # only the first line is read
        ("\n\nMars", ["Mars"], True),  # leading blank lines are not the first line
    ],
)
def test_grade_open(answer, aliases, expected):
    assert grading.grade_open(answer, aliases) is expected


def test_grade_open_reads_only_the_first_words():
    filler = " ".join(["word"] * grading.ANSWER_WORDS)
    assert grading.grade_open(f"Mars {filler}", ["Mars"])
    assert not grading.grade_open(f"{filler} Mars", ["Mars"])


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ("96", 96.0),
        ("5 + 91 = 96", 96.0),
        ("The answer is 1,151.", 1151.0),
        ("The answer is 18 dollars, because 9 * 2", 18.0),
        ("#### 2,125", 2125.0),
        ("$18", 18.0),
        ("She makes 9 * 2 = $18", 18.0),
        ("16-3-4 = 9", 9.0),  # binary minus signs are not negative numbers
        ("-5", -5.0),
        ("It is 3.50 per egg", 3.5),
        ("1,000,000", 1_000_000.0),
        ("v2 costs 7", 7.0),  # digits inside words are not numbers
        ("no idea", None),
        ("", None),
        ("12\n13", 12.0),  # first line only
    ],
)
def test_extract_number(answer, expected):
    assert grading.extract_number(answer) == expected


@pytest.mark.parametrize(
    ("answer", "gold", "expected"),
    [
        ("96", "96", True),
        ("96.0", "96", True),
        ("1,151", "1151", True),
        ("1151", "1,151", True),
        ("The answer is 97.", "96", False),
        ("ninety-six", "96", False),
        ("0.5", 0.5, True),
    ],
)
def test_grade_numeric(answer, gold, expected):
    assert grading.grade_numeric(answer, gold) is expected


def test_grade_numeric_rejects_a_non_numeric_gold():
    with pytest.raises(ValueError, match="not a number"):
        grading.grade_numeric("5", "five")


def _mc() -> QAItem:
    return QAItem(id="t:1", source="t", kind="mc", question="q", choices=["a", "b", "c"], gold=2)


def test_grade_dispatches_on_kind():
    assert grading.grade(_mc(), "C. c", chosen=2)
    assert not grading.grade(_mc(), "A. a", chosen=0)
    numeric = QAItem(id="t:2", source="t", kind="numeric", question="q", aliases=["42"])
    assert grading.grade(numeric, "It is 42")
    assert not grading.grade(numeric, "It is 43")
    open_item = QAItem(id="t:3", source="t", kind="open", question="q", aliases=["Paris"])
    assert grading.grade(open_item, "Paris, France")


def test_multiple_choice_grading_needs_the_chosen_index():
    # The answer text alone is ambiguous ("A. a" could be a choice named "A. a").
    with pytest.raises(ValueError, match="chosen index"):
        grading.grade(_mc(), "C. c")
