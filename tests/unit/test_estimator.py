"""The calibrated head: pure features and math (service side) against the sklearn fit (training side)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from adapters import head_fit
from service.calibration import estimator
from tests.fake_engine import WordTokenizer


def test_answer_likelihood_sums_averages_and_counts():
    lk = estimator.answer_likelihood([-1.0, -3.0])
    assert (lk.logprob_sum, lk.logprob_mean, lk.tokens) == (-4.0, -2.0, 2)


def test_answer_likelihood_of_an_empty_or_impossible_answer_is_finite():
    assert estimator.answer_likelihood([]).tokens == 0
    lk = estimator.answer_likelihood([-math.inf, -1.0])
    assert lk.logprob_sum == estimator.EMPTY_ANSWER_LOGPROB - 1.0


def test_likelihood_prompt_puts_the_answer_after_the_rendered_question():
    tok = WordTokenizer()
    ids, start = estimator.likelihood_prompt(
        tok, [{"role": "user", "content": "Capital of France?"}], "Paris"
    )
    assert ids[start:] == tok.encode("Paris", add_special_tokens=False)
    assert start > 0


def _head(**kw) -> estimator.HeadParams:
    params = {
        "features": ["adapter_gap", "answer_logprob_sum"],
        "coef": [1.0, 2.0],
        "intercept": -0.5,
        "mean": [0.0, -5.0],
        "scale": [1.0, 2.0],
    }
    return estimator.HeadParams(**{**params, **kw})


def test_head_confidence_is_the_logistic_of_the_standardized_linear_score():
    values = {"adapter_gap": 1.0, "answer_logprob_sum": -3.0, "answer_logprob_mean": -1.0}
    z = -0.5 + 1.0 * 1.0 + 2.0 * (-3.0 + 5.0) / 2.0
    assert estimator.head_confidence(_head(), values) == pytest.approx(1 / (1 + math.exp(-z)))


@pytest.mark.parametrize(
    "bad",
    [
        {"features": ["adapter_gap", "shoe_size"]},
        {"coef": [1.0, float("nan")]},
        {"scale": [1.0, 0.0]},
        {"mean": [0.0]},
        {"features": ["adapter_gap", "adapter_gap"]},
    ],
)
def test_a_bad_head_is_refused_on_load(bad):
    with pytest.raises(ValidationError):
        _head(**bad)


def test_missing_or_non_finite_features_are_refused():
    with pytest.raises(ValueError, match="missing"):
        estimator.head_confidence(_head(), {"adapter_gap": 1.0})
    with pytest.raises(ValueError, match="finite"):
        estimator.head_confidence(_head(), {"adapter_gap": math.nan, "answer_logprob_sum": -1.0})


def _rows(n: int, seed: int = 0) -> list[dict]:
    """Correct answers are more likely under the model; the adapter gap is noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        correct = bool(i % 2)
        tokens = int(rng.integers(1, 6))
        mean = rng.normal(-1.0 if correct else -2.5, 0.7)
        rows.append(
            {
                "id": f"q{i}",
                "source": "s",
                "group": "g",
                "correct": correct,
                "adapter_gap": float(rng.normal()),
                "zero_shot_gap": float(rng.normal()),
                "answer_logprob_sum": mean * tokens,
                "answer_logprob_mean": mean,
                "answer_tokens": tokens,
                "answer": "B. x" if i % 3 == 0 else "x",
            }
        )
    return rows


def _two_token_row(source: str, i: int, correct: bool, mean: float, gap: float, answer: str) -> dict:
    """A signal row of a two-token answer whose mean token log-prob is `mean`; its source is its group."""
    return {
        "id": f"{source}{i}",
        "source": source,
        "group": source,
        "correct": correct,
        "adapter_gap": gap,
        "answer_logprob_sum": 2 * mean,
        "answer_logprob_mean": mean,
        "answer_tokens": 2,
        "answer": answer,
    }


def test_the_head_ranks_within_sources_where_pooling_would_rank_backwards():
    """Simpson's paradox as in the real data: the model's own answers are likely and mostly
    wrong, proposed choices unlikely and right half the time; inside each, likelier is righter."""
    from sklearn.linear_model import LogisticRegression

    from adapters.stratified import stratified_auroc

    rng = np.random.default_rng(3)
    rows = []
    for source, level, rate in (("own", -0.5, 0.05), ("choices", -3.0, 0.5)):
        for i in range(600):
            correct = bool(rng.random() < rate)
            mean = rng.normal(level + (0.6 if correct else 0.0), 0.4)
            rows.append(_two_token_row(source, i, correct, mean, float(rng.normal()), "x"))
    y, strata = head_fit.labels(rows), [r["source"] for r in rows]
    pooled = LogisticRegression().fit(head_fit.feature_matrix(rows, ["answer_logprob_mean"]), y)
    assert pooled.coef_[0][0] < 0  # what a plain fit learns
    p = head_fit.apply_head(head_fit.fit_head(rows), rows)
    assert stratified_auroc(p, y, strata) > 0.75


def test_the_head_learns_to_rank_by_likelihood():
    from service.calibration.metrics import auroc

    train, held = _rows(400, seed=1), _rows(400, seed=2)
    head = head_fit.fit_head(train)
    p = head_fit.apply_head(head, held)
    assert auroc(p, head_fit.labels(held)) > 0.8
    assert head.coef[head.features.index("answer_logprob_mean")] > 0


def test_groups_weigh_the_same_in_total():
    rows = [{"group": "a"}] * 3 + [{"group": "b"}]
    weights = head_fit.group_weights(rows)
    assert weights[:3].sum() == pytest.approx(weights[3:].sum())


@pytest.mark.parametrize(
    ("answer", "numeric"),
    [
        *[("56", 1.0), (" 54. ", 1.0), ("-3.5", 1.0), ("1,200", 1.0), ("$5", 1.0), ("50%", 1.0)],
        ("1969", 1.0),
        *[("The answer is 56", 0.0), ("56 apples", 0.0), ("B. 56", 0.0), ("Paris", 0.0), ("", 0.0)],
    ],
)
def test_numeric_answer_marks_bare_numbers_only(answer, numeric):
    values = estimator.features(0.0, estimator.answer_likelihood([-1.0]), answer)
    assert values["numeric_answer"] == numeric


def test_bare_numbers_get_their_own_level_of_confidence():
    """The embedded model's arithmetic: short, likely answers that are almost never right,
    beside proposed choice texts just as short and likely that are right half the time.
    Without the numeric regime one level serves both; with it each group's mean confidence
    lands near its own accuracy."""
    rng = np.random.default_rng(5)
    rows = []
    for source, answer, rate in (("arithmetic", "56", 0.02), ("choices", "Paris", 0.5)):
        for i in range(500):
            correct = bool(rng.random() < rate)
            mean = rng.normal(-0.8 + (0.3 if correct else 0.0), 0.5)
            rows.append(_two_token_row(source, i, correct, mean, float(rng.normal()), answer))
    y = head_fit.labels(rows)
    arithmetic = np.array([r["source"] == "arithmetic" for r in rows])
    for regime, tolerance in ((("answer_tokens_log", "lettered_answer"), None), (head_fit.REGIME, 0.05)):
        p = head_fit.apply_head(head_fit.fit_head(rows, regime=regime), rows)
        gaps = [abs(p[m].mean() - y[m].mean()) for m in (arithmetic, ~arithmetic)]
        if tolerance is None:
            assert min(gaps) > 0.15  # one shared level sits between the two groups
        else:
            assert max(gaps) < tolerance
