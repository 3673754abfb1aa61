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


def fit_head(rows: Sequence[Row], *, names: Sequence[str] = FEATURE_NAMES, c: float = HEAD_C) -> HeadParams:
    """Logistic regression of correctness on the standardized features (group-weighted).

    Raises:
        ValueError: fewer than two classes among the rows.
    """
    from sklearn.linear_model import LogisticRegression

    x, y = feature_matrix(rows, names), labels(rows)
    if len(set(y.tolist())) < 2:
        raise ValueError("the head needs both correct and wrong answers to fit")
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0
    model = LogisticRegression(C=c, max_iter=1000)
    model.fit((x - mean) / scale, y, sample_weight=group_weights(rows))
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[str(r.get("group"))] += 1
    return HeadParams(
        features=list(names),
        coef=[float(v) for v in model.coef_[0]],
        intercept=float(model.intercept_[0]),
        mean=[float(v) for v in mean],
        scale=[float(v) for v in scale],
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
    """Platt scaling of one signal: the same calibration the head gets, one input."""
    return fit_head(rows, names=(name,))


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
