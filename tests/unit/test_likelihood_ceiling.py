"""The likelihood-ceiling experiment's arithmetic: PMI features, within-question win rate and
the pooled pair AUROC, on hand-made rows whose answers are known."""

from __future__ import annotations

import pytest

from adapters import likelihood_ceiling as lc


def _row(q: int, c: int, gold: int, logprob_sum: float, prior_sum: float, tokens: int = 2) -> dict:
    return {
        "id": f"sciq:{q}#c{c}",
        "source": "sciq",
        "correct": c == gold,
        "sum": logprob_sum,
        "prior_sum": prior_sum,
        "tokens": tokens,
    }


# Question 1: the gold choice is unlikely as a reply but far more likely given its question than
# without it; a common word ("water") wins on raw likelihood only because it is likely anyway.
ROWS = [
    _row(1, 0, 1, -3.0, -2.0),  # wrong: likely whatever the question
    _row(1, 1, 1, -6.0, -12.0),  # gold: PMI +6
    _row(1, 2, 1, -9.0, -8.0),
    _row(2, 0, 0, -4.0, -9.0),  # gold: PMI +5
    _row(2, 1, 0, -2.0, -2.5),
]


def test_pmi_is_the_likelihood_gain_from_the_question():
    gold = ROWS[1]
    assert lc.FEATURES["pmi_sum"](gold) == pytest.approx(6.0)
    assert lc.FEATURES["pmi_mean"](gold) == pytest.approx(3.0)
    assert lc.FEATURES["logprob_mean"](gold) == pytest.approx(-3.0)


def test_win_rate_compares_the_gold_with_every_wrong_choice_of_its_own_question():
    # Raw sum: q1 gold -6 beats -9 but loses to -3; q2 gold -4 loses to -2: 1 of 3.
    assert lc.win_rate(ROWS, lc.FEATURES["logprob_sum"]) == pytest.approx(1 / 3)
    # PMI: q1 gold +6 beats -1 and -1; q2 gold +5 beats +0.5: 3 of 3.
    assert lc.win_rate(ROWS, lc.FEATURES["pmi_sum"]) == pytest.approx(1.0)


def test_ties_count_half():
    rows = [_row(1, 0, 0, -1.0, -1.0), _row(1, 1, 0, -1.0, -1.0)]
    assert lc.win_rate(rows, lc.FEATURES["logprob_sum"]) == pytest.approx(0.5)


def test_pair_auroc_pools_one_gold_and_one_wrong_per_question():
    pmi = lc.pair_auroc(ROWS, lc.FEATURES["pmi_sum"], n_boot=50)
    raw = lc.pair_auroc(ROWS, lc.FEATURES["logprob_sum"], n_boot=50)
    assert pmi["n"] == raw["n"] == 4
    assert pmi["auroc"] == pytest.approx(1.0)  # both golds (+6, +5) above both wrongs
    assert raw["auroc"] < 0.5


def test_summary_and_markdown_cover_every_feature_pooled_and_per_source():
    summary = lc.summarize(ROWS, n_boot=20)
    assert set(summary) == {"pooled", "sciq"}
    assert set(summary["pooled"]) == set(lc.FEATURES)
    readme = lc.readme_rows([(-2.0, -10.0, 4)] * 6)
    assert [r["answer"] for r in readme[2:4]] == ["56", "54"]
    text = lc.markdown(summary, readme)
    assert "| pooled (n=4) | pmi_sum | 1.000" in text
    assert "| What is 7 * 8? | 56 | -2.00 | -0.50 | 8.00 | 2.00 |" in text
