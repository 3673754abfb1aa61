"""Fitting the calibrated head and the calibrated baselines on calibration-split signals.

Everything here is fitted on rows of the calibration split (see `adapters.features`)
and applied to other rows; nothing reads a test split. The head is a scikit-learn
logistic regression on standardized features, exported as `HeadParams` so the service
applies it with pure math (`service.calibration.estimator`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adapters.calibrate import apply_temperature, fit_temperature
from adapters.data import stable_seed
from adapters.features import head_inputs
from service.calibration.estimator import FEATURE_NAMES, HeadParams, head_confidence

Row = Mapping[str, Any]
# Regularisation of the head (sklearn's C): a few hundred items per group do not need
# more freedom than 4 weights, and the default keeps the weights small and stable.
HEAD_C = 1.0


def labels(rows: Sequence[Row]) -> np.ndarray:
    return np.array([float(r["correct"]) for r in rows])


def feature_matrix(rows: Sequence[Row], names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
    return np.array([[head_inputs(r)[n] for n in names] for r in rows], dtype=np.float64)


def group_weights(rows: Sequence[Row]) -> np.ndarray:
    """Each group (labelled mix, MMLU, no-choice pairs) weighs the same in total, so the
    largest one does not decide the calibration of the others."""
    counts: dict[Any, int] = defaultdict(int)
    for r in rows:
        counts[r.get("group")] += 1
    return np.array([len(rows) / (len(counts) * counts[r.get("group")]) for r in rows])


# Signals whose slopes are learnt within sources, and regime features that only set the
# level of confidence (see fit_head).
SIGNALS = (
    "adapter_gap",
    "answer_logprob_sum",
    "answer_logprob_mean",
    "lettered_x_adapter_gap",
    "lettered_x_logprob_sum",
    "lettered_x_logprob_mean",
)
REGIME = ("answer_tokens_log", "lettered_answer", "numeric_answer")


def stratum(row: Row) -> str:
    """The fixed-effect group of a row: its record group and source."""
    return f"{row.get('group')}:{row.get('source')}"


def _standardize(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    return (x - mean) / scale, mean, scale


def fit_head(
    rows: Sequence[Row],
    *,
    signals: Sequence[str] = SIGNALS,
    regime: Sequence[str] = REGIME,
    c: float = HEAD_C,
) -> HeadParams:
    """A logistic head whose signal slopes say how answers rank *within* a source.

    Pooled over sources, the signals mostly tell sources apart: the model's own greedy
    answers are likely under it and mostly wrong, proposed choice texts are unlikely and
    right half the time, so a plain logistic regression learns that a likely answer is
    a wrong one, and ranks answers to the same question backwards. So, in two steps:
    1. logistic regression of correctness on the standardized signals plus one indicator
       per stratum (group and source): the slopes are within-source effects;
    2. with that score as a fixed offset, the intercept and the regime features (answer
       length, lettered answer, bare number) are fitted pooled: they set the level, not the
       order.

    Raises:
        ValueError: fewer than two classes among the rows.
    """
    from scipy.optimize import minimize
    from sklearn.linear_model import LogisticRegression

    y, weights = labels(rows), group_weights(rows)
    if len(set(y.tolist())) < 2:
        raise ValueError("the head needs both correct and wrong answers to fit")
    z_sig, m_sig, s_sig = _standardize(feature_matrix(rows, signals))
    strata = sorted({stratum(r) for r in rows})
    dummies = np.array([[stratum(r) == k for k in strata] for r in rows], dtype=np.float64)
    within = LogisticRegression(C=c, max_iter=2000).fit(np.hstack([z_sig, dummies]), y, sample_weight=weights)
    slopes = within.coef_[0][: len(signals)]
    offset = z_sig @ slopes
    z_reg, m_reg, s_reg = _standardize(feature_matrix(rows, regime))

    def loss(theta: np.ndarray) -> float:
        z = offset + theta[0] + z_reg @ theta[1:]
        # the same L2 penalty as step 1 (sklearn's 1 / (2C)) on the regime weights
        return float(np.sum(weights * (np.logaddexp(0.0, z) - y * z)) + np.sum(theta[1:] ** 2) / (2 * c))

    theta = minimize(loss, np.zeros(1 + len(regime)), method="L-BFGS-B").x
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[str(r.get("group"))] += 1
    return HeadParams(
        features=[*signals, *regime],
        coef=[float(v) for v in (*slopes, *theta[1:])],
        intercept=float(theta[0]),
        mean=[float(v) for v in (*m_sig, *m_reg)],
        scale=[float(v) for v in (*s_sig, *s_reg)],
        fitted_on=dict(counts),
    )


def apply_head(head: HeadParams, rows: Sequence[Row]) -> np.ndarray:
    return np.array([head_confidence(head, head_inputs(r)) for r in rows])


def cross_fitted(
    rows: Sequence[Row],
    fit: Callable[[Sequence[Row]], Callable[[Sequence[Row]], np.ndarray]],
    *,
    folds: int = 5,
) -> np.ndarray:
    """Out-of-fold confidences: each row scored by a model fitted without its fold.
    Folds are drawn per question (``question_id`` or ``id``), so the choices of one
    question never sit on both sides."""
    key = [str(r.get("question_id") or r["id"]).split("#")[0] for r in rows]
    fold = np.array([stable_seed("fold", k) % folds for k in key])
    out = np.empty(len(rows))
    for f in range(folds):
        train = [r for r, g in zip(rows, fold, strict=True) if g != f]
        held = [i for i, g in enumerate(fold) if g == f]
        out[held] = fit(train)([rows[i] for i in held])
    return out


# --------------------------------------------------------------------------- baselines


@dataclass(frozen=True)
class Calibrators:
    """Everything the baselines need, fitted on the calibration split (and train labels)."""

    adapter_temperature: float  # the adapter's own, as served
    zero_shot_temperature: float
    train_rate: float
    source_rates: dict[str, float]
    likelihood_sum: HeadParams
    likelihood_mean: HeadParams
    head: HeadParams


def one_feature(rows: Sequence[Row], name: str) -> HeadParams:
    """One signal through the same two-step fit as the head (within-source slope, regime level)."""
    return fit_head(rows, signals=(name,))


def source_rates(rows: Sequence[Row]) -> dict[str, float]:
    by: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by[str(r["source"])].append(float(r["correct"]))
    return {s: float(np.mean(v)) for s, v in by.items()}


def fit_calibrators(
    cal_rows: Sequence[Row], *, adapter_temperature: float, train_rate: float, head_rows: Sequence[Row]
) -> Calibrators:
    """Fit every calibrated baseline and the head on calibration rows."""
    zs = fit_temperature([r["zero_shot_gap"] for r in cal_rows], labels(cal_rows))
    return Calibrators(
        adapter_temperature=adapter_temperature,
        zero_shot_temperature=zs.temperature,
        train_rate=train_rate,
        source_rates=source_rates(cal_rows),
        likelihood_sum=one_feature(head_rows, "answer_logprob_sum"),
        likelihood_mean=one_feature(head_rows, "answer_logprob_mean"),
        head=fit_head(head_rows),
    )


METHODS = (
    "constant",
    "source_rate",
    "zero_shot_ts",
    "likelihood_sum",
    "likelihood_mean",
    "lora_prompt",
    "calibrated_head",
)


def method_confidences(cal: Calibrators, rows: Sequence[Row]) -> dict[str, np.ndarray]:
    """Every method's confidence for each row, in METHODS order."""
    n = len(rows)
    return {
        "constant": np.full(n, cal.train_rate),
        "source_rate": np.array([cal.source_rates.get(str(r["source"]), cal.train_rate) for r in rows]),
        "zero_shot_ts": apply_temperature([r["zero_shot_gap"] for r in rows], cal.zero_shot_temperature),
        "likelihood_sum": apply_head(cal.likelihood_sum, rows),
        "likelihood_mean": apply_head(cal.likelihood_mean, rows),
        "lora_prompt": apply_temperature([r["adapter_gap"] for r in rows], cal.adapter_temperature),
        "calibrated_head": apply_head(cal.head, rows),
    }
