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


# Real echoes from adapters/graded/smollm2-135m/train_mix.jsonl, all graded correct by the
# containment grader before it saw the question: the answer restates the question.
ECHOES = [
    (
        "Who was the Georgia Peach?",
        "The Georgia Peach is a legendary Georgia-based company that has been making and selling peaches",
        ["The Georgia Peach", "georgia peach"],
    ),
    (
        "Which town in East Sussex now stands on the site of the battle of Hastings?",
        "The Battle of Hastings is a legendary event that took place on the 9th of October 1066",
        ["Battle", "Battle Of", "battle"],
    ),
    (
        "What is the US state capital of Kansas?",
        "The US state capital of Kansas is Kansas City.",
        ["Topeka", "Capital of Kansas", "capital of kansas"],
    ),
    (
        "‘The Crafty Cockney’ was the nickname of which British darts player?",
        "The Crafty Cockney was a British darts player named Jack Black.",
        ["Eric Bristow", "Crafty Cockney", "The Crafty Cockney"],
    ),
]


@pytest.mark.parametrize(("question", "answer", "aliases"), ECHOES)
def test_an_alias_taken_from_the_question_does_not_make_an_echo_correct(question, answer, aliases):
    assert grading.grade_open(answer, aliases)  # what the question-blind grader said
    assert not grading.grade_open(answer, aliases, question=question)


def test_an_alias_outside_the_question_still_counts():
    question = "What is the US state capital of Kansas?"
    assert grading.grade_open(
        "Topeka is the capital of Kansas.", ["Topeka", "Capital of Kansas"], question=question
    )


@pytest.mark.parametrize(
    ("question", "answer", "gold"),
    [
        ("Calculate 3 - 0 =", "3", "3"),  # arithmetic identities: the result is in the question
        ("Calculate 535 / 1 =", "535", "535"),
        (
            "Mike's teacher leaves as homework the reading of a 200-page book in 20 days at 10 pages a day.",
            "Mike's teacher will leave 200 pages of the book in 30 days. So, 10 pages",
            "10",
        ),
    ],
)
def test_a_number_copied_from_the_question_is_not_credited(question, answer, gold):
    assert grading.grade_numeric(answer, gold)
    assert not grading.grade_numeric(answer, gold, question=question)


def test_a_computed_number_is_credited():
    assert grading.grade_numeric("12 + 35 = 47", "47", question="Calculate 12 + 35 =")


def test_grade_passes_the_question_to_the_grader():
    item = QAItem(
        id="t:4", source="t", kind="open", question="Who was the Georgia Peach?", aliases=["Georgia Peach"]
    )
    assert not grading.grade(item, "The Georgia Peach was a company.")


def test_regrade_relabels_stored_echoes_from_their_gold():
    from adapters.data import GradedRecord

    echo = GradedRecord(
        question=ECHOES[0][0], answer=ECHOES[0][1], correct=True, kind="open", meta={"gold": ECHOES[0][2]}
    )
    copied = GradedRecord(
        question="Calculate 3 - 0 =", answer="3", correct=True, kind="numeric", meta={"gold": "3"}
    )
    right = GradedRecord(
        question="Calculate 9 * 8 =", answer="72", correct=False, kind="numeric", meta={"gold": "72"}
    )
    assert [grading.regrade(r) for r in (echo, copied, right)] == [False, False, True]
