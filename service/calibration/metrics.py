"""Calibration and discrimination metrics for confidences of correctness.

Every metric takes the same two arrays: ``p``, the stated probability that each answer is
correct, and ``y``, whether it was (1) or not (0). Keeping one signature lets
:func:`bootstrap_ci` wrap any of them. These are the numbers Kapoor et al. 2024 report
(ECE, AUROC; Brier and NLL as proper scoring rules), computed with scikit-learn where it has
them so the definitions are the well-known ones.

Bin convention (ECE, reliability bins): ``n_bins`` equal-width bins on [0, 1]; bin ``k``
holds ``k/B <= p < (k+1)/B`` (computed as ``floor(p * B)``) and the last bin also holds
``p == 1.0``, so every confidence lands in exactly one bin.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
MetricFn = Callable[[FloatArray, FloatArray], float]

# log(1e-15) ~ -34.5: one confidently wrong answer costs at most ~34.5 nats of NLL,
# instead of infinity wiping out the mean.
NLL_CLIP = 1e-15

AUROC_ONE_CLASS = "AUROC undefined: labels contain only one class (all correct or all wrong)"


def as_arrays(p: ArrayLike, y: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Validate and convert to float arrays, so every metric refuses the same bad input.

    Raises:
        ValueError: shapes differ, arrays are empty or not 1-D, ``p`` is outside [0, 1]
            or not finite, or ``y`` holds values other than 0 and 1.
    """
    pa = np.asarray(p, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if pa.ndim != 1 or ya.ndim != 1:
        raise ValueError(f"p and y must be 1-D, got shapes {pa.shape} and {ya.shape}")
    if pa.shape != ya.shape:
        raise ValueError(f"p and y must have the same length, got {pa.size} and {ya.size}")
    if pa.size == 0:
        raise ValueError("p and y are empty")
    if not np.all(np.isfinite(pa)) or pa.min() < 0.0 or pa.max() > 1.0:
        raise ValueError("p must hold finite probabilities in [0, 1]")
    if not np.all((ya == 0.0) | (ya == 1.0)):
        raise ValueError("y must hold binary correctness labels (0 or 1)")
    return pa, ya


def bin_index(p: FloatArray, n_bins: int) -> NDArray[np.intp]:
    """Equal-width bin of each confidence; the last bin is closed so p == 1.0 belongs to it."""
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    return np.minimum(np.floor(p * n_bins).astype(np.intp), n_bins - 1)


def accuracy(p: ArrayLike, y: ArrayLike) -> float:
    """Fraction of answers that are correct (``p`` is accepted only for the shared signature)."""
    _, ya = as_arrays(p, y)
    return float(ya.mean())


def mean_confidence(p: ArrayLike, y: ArrayLike) -> float:
    """Average stated confidence; compared with accuracy it shows over- or under-confidence."""
    pa, _ = as_arrays(p, y)
    return float(pa.mean())


def ece(p: ArrayLike, y: ArrayLike, *, n_bins: int = 10) -> float:
    """Expected calibration error: sum over bins of (bin size / n) * |accuracy - mean confidence|.

    Uses the module's bin convention (last bin includes 1.0); empty bins contribute nothing.
    """
    pa, ya = as_arrays(p, y)
    idx = bin_index(pa, n_bins)
    conf_sum = np.bincount(idx, weights=pa, minlength=n_bins)
    correct_sum = np.bincount(idx, weights=ya, minlength=n_bins)
    # |sum(y) - sum(p)| / n per bin equals (count / n) * |acc - conf| without dividing by 0.
    return float(np.abs(correct_sum - conf_sum).sum() / pa.size)


def auroc_undefined_reason(y: ArrayLike) -> str | None:
    """Why AUROC cannot be computed for these labels, or None when it can."""
    ya = np.asarray(y, dtype=np.float64)
    if ya.size == 0 or np.unique(ya).size < 2:
        return AUROC_ONE_CLASS
    return None


def auroc(p: ArrayLike, y: ArrayLike) -> float:
    """Area under the ROC curve of confidence as a detector of correct answers.

    Returns NaN (never raises) when only one class is present, since then it is undefined;
    :func:`auroc_undefined_reason` says so in words. A bootstrap resample can hit this case.
    """
    from sklearn.metrics import roc_auc_score

    pa, ya = as_arrays(p, y)
    if auroc_undefined_reason(ya) is not None:
        return math.nan
    return float(roc_auc_score(ya, pa))


def brier(p: ArrayLike, y: ArrayLike) -> float:
    """Mean squared error between confidence and correctness (a proper scoring rule)."""
    from sklearn.metrics import brier_score_loss

    pa, ya = as_arrays(p, y)
    return float(brier_score_loss(ya, pa, labels=[0, 1]))


def nll(p: ArrayLike, y: ArrayLike) -> float:
    """Mean negative log-likelihood (log loss) in nats, with ``p`` clipped to
    [NLL_CLIP, 1 - NLL_CLIP] so a single confidence of exactly 0 or 1 stays finite."""
    from sklearn.metrics import log_loss

    pa, ya = as_arrays(p, y)
    clipped = np.clip(pa, NLL_CLIP, 1.0 - NLL_CLIP)
    return float(log_loss(ya, clipped, labels=[0, 1]))


def reliability_bins(p: ArrayLike, y: ArrayLike, *, n_bins: int = 10) -> list[dict[str, Any]]:
    """Per-bin data for a reliability diagram.

    Returns one dict per bin, in order: ``lower``, ``upper`` (bin edges), ``count``,
    ``mean_confidence`` and ``accuracy`` (None for an empty bin).
    """
    pa, ya = as_arrays(p, y)
    idx = bin_index(pa, n_bins)
    out: list[dict[str, Any]] = []
    for k in range(n_bins):
        mask = idx == k
        count = int(mask.sum())
        out.append(
            {
                "lower": k / n_bins,
                "upper": (k + 1) / n_bins,
                "count": count,
                "mean_confidence": float(pa[mask].mean()) if count else None,
                "accuracy": float(ya[mask].mean()) if count else None,
            }
        )
    return out


def confidence_histogram(p: ArrayLike, bins: int = 10) -> dict[str, list[float] | list[int]]:
    """Histogram of confidences on [0, 1]: the reference distribution for drift monitoring.

    Returns ``{"bin_edges": [bins + 1 floats], "counts": [bins ints]}``; like numpy, the
    last bin includes 1.0.
    """
    pa = np.asarray(p, dtype=np.float64)
    if pa.ndim != 1 or not np.all(np.isfinite(pa)) or (pa.size and (pa.min() < 0 or pa.max() > 1)):
        raise ValueError("p must be a 1-D array of finite probabilities in [0, 1]")
    counts, edges = np.histogram(pa, bins=bins, range=(0.0, 1.0))
    return {"bin_edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


# Vectorized twins of the metrics above, used only for bootstrap resamples: one call per
# resample through scikit-learn's input validation costs ~1 ms, which made a full report
# take minutes. Each takes the original (n,) arrays and a (rows, n) block of resample
# indices and returns one value per resample; tests check they agree with scikit-learn.
IndexArray = NDArray[np.intp]
BatchMetricFn = Callable[[FloatArray, FloatArray, IndexArray], FloatArray]

# Resamples per chunk: bounds memory at a few (chunk, n) arrays for large eval sets.
_BOOT_CHUNK = 128


def _batch_accuracy(p: FloatArray, y: FloatArray, rows: IndexArray) -> FloatArray:
    return np.asarray(y[rows].mean(axis=1), dtype=np.float64)


def _batch_mean_confidence(p: FloatArray, y: FloatArray, rows: IndexArray) -> FloatArray:
    return np.asarray(p[rows].mean(axis=1), dtype=np.float64)


def _row_bincount(ids: IndexArray, n_ids: int, weights: FloatArray | None = None) -> FloatArray:
    """bincount of each row separately, as a (rows, n_ids) table: offset each row's ids
    so one flat bincount does all rows."""
    k = ids.shape[0]
    flat = (ids + n_ids * np.arange(k)[:, None]).ravel()
    w = None if weights is None else weights.ravel()
    return np.bincount(flat, weights=w, minlength=k * n_ids).reshape(k, n_ids).astype(np.float64)


def _batch_ece(p: FloatArray, y: FloatArray, rows: IndexArray, n_bins: int = 10) -> FloatArray:
    ids = bin_index(p, n_bins)[rows]
    conf = _row_bincount(ids, n_bins, p[rows])
    corr = _row_bincount(ids, n_bins, y[rows])
    return np.asarray(np.abs(corr - conf).sum(axis=1) / rows.shape[1], dtype=np.float64)


def _batch_auroc(p: FloatArray, y: FloatArray, rows: IndexArray) -> FloatArray:
    """Mann-Whitney AUROC with ties counted one half (the number roc_auc_score gives),
    NaN for one-class resamples.

    A resample only reweights the items, so the items are sorted once and grouped by
    distinct confidence; per resample, AUROC = sum over groups of positives(g) *
    (negatives below g + negatives in g / 2) / (n_pos * n_neg). No per-resample sort.
    """
    distinct, group = np.unique(p, return_inverse=True)
    ids = group[rows]
    pos = _row_bincount(ids, distinct.size, y[rows])
    neg = _row_bincount(ids, distinct.size) - pos
    neg_below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (n_pos * n_neg)
    return np.asarray(np.where((n_pos > 0) & (n_neg > 0), auc, np.nan), dtype=np.float64)


def _batch_brier(p: FloatArray, y: FloatArray, rows: IndexArray) -> FloatArray:
    return np.asarray(((p - y) ** 2)[rows].mean(axis=1), dtype=np.float64)


def _batch_nll(p: FloatArray, y: FloatArray, rows: IndexArray) -> FloatArray:
    q = np.clip(p, NLL_CLIP, 1.0 - NLL_CLIP)
    per_item = -(y * np.log(q) + (1 - y) * np.log1p(-q))
    return np.asarray(per_item[rows].mean(axis=1), dtype=np.float64)


_BATCH_METRICS: dict[Callable[..., float], BatchMetricFn] = {
    accuracy: _batch_accuracy,
    mean_confidence: _batch_mean_confidence,
    ece: _batch_ece,
    auroc: _batch_auroc,
    brier: _batch_brier,
    nll: _batch_nll,
}


def _batched(fn: BatchMetricFn, p: FloatArray, y: FloatArray, rows: IndexArray) -> FloatArray:
    """``fn`` over the resamples ``rows`` (one index row per resample), chunk by chunk."""
    parts = [fn(p, y, rows[i : i + _BOOT_CHUNK]) for i in range(0, len(rows), _BOOT_CHUNK)]
    return np.concatenate(parts)


def _percentile_interval(samples: FloatArray, alpha: float) -> tuple[float, float]:
    """Percentile interval over the finite samples; NaN bounds when none are finite."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return math.nan, math.nan
    lo, hi = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def _resample_indices(size: int, n: int, seed: int) -> IndexArray:
    """n rows of ``size`` indices drawn with replacement; one seed gives one set of rows."""
    if n < 1:
        raise ValueError(f"number of bootstrap resamples must be >= 1, got {n}")
    rng = np.random.default_rng(seed)
    return rng.integers(0, size, size=(n, size))


def bootstrap_ci(
    metric_fn: MetricFn,
    p: ArrayLike,
    y: ArrayLike,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) interval of ``metric_fn(p, y)`` over items.

    Deterministic for a given seed. The metrics of this module are computed on all
    resamples at once by exact vectorized twins (tested equal to the scikit-learn point
    versions); any other ``metric_fn`` is called once per resample. Resamples where the
    metric is undefined (NaN, e.g. AUROC on a one-class resample) are dropped; if all
    are, both bounds are NaN.

    ECE is biased upward on finite samples (noise never cancels inside an absolute value),
    and resampling adds more, so for well-calibrated confidences its interval can lie
    entirely above the point estimate. Read it as sampling spread, not as a debiased range.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    pa, ya = as_arrays(p, y)
    rows = _resample_indices(pa.size, n, seed)
    batch_fn = _BATCH_METRICS.get(metric_fn)
    if batch_fn is not None:
        samples = _batched(batch_fn, pa, ya, rows)
    else:
        samples = np.array([metric_fn(pa[r], ya[r]) for r in rows], dtype=np.float64)
    return _percentile_interval(samples, alpha)


def paired_bootstrap_auroc_diff(
    p_a: ArrayLike,
    p_b: ArrayLike,
    y: ArrayLike,
    *,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """AUROC(a) - AUROC(b) for two methods scored on the same items, with a paired interval.

    Each resample draws items once and scores both methods on them, so item difficulty
    cancels and the interval is tighter than comparing two separate intervals. A claim such
    as "AUROC at least 0.10 above zero-shot" holds when ``ci_low >= 0.10``.

    Returns ``{"estimate", "ci_low", "ci_high", "n_valid"}`` (``n_valid``: resamples with
    both classes present); estimate and bounds are NaN when AUROC is undefined.
    """
    return paired_bootstrap_diff(auroc, p_a, p_b, y, n=n, seed=seed, alpha=alpha)


def paired_bootstrap_diff(
    metric_fn: MetricFn,
    p_a: ArrayLike,
    p_b: ArrayLike,
    y: ArrayLike,
    *,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """metric(a) - metric(b) for two confidences of the same items, with a paired percentile
    interval (each resample scores both on the same items). For ECE or Brier, "a is better
    than b" holds when ``ci_high < 0``.

    Returns ``{"estimate", "ci_low", "ci_high", "n_valid"}`` (``n_valid``: resamples where
    the metric is defined for both).

    Raises:
        ValueError: a metric without a vectorized twin (see ``_BATCH_METRICS``), or bad inputs.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    batch_fn = _BATCH_METRICS.get(metric_fn)
    if batch_fn is None:
        raise ValueError(f"no paired bootstrap for {getattr(metric_fn, '__name__', metric_fn)}")
    pa, ya = as_arrays(p_a, y)
    pb, _ = as_arrays(p_b, y)
    rows = _resample_indices(ya.size, n, seed)
    diffs = _batched(batch_fn, pa, ya, rows) - _batched(batch_fn, pb, ya, rows)
    lo, hi = _percentile_interval(diffs, alpha)
    return {
        "estimate": metric_fn(pa, ya) - metric_fn(pb, ya),
        "ci_low": lo,
        "ci_high": hi,
        "n_valid": int(np.isfinite(diffs).sum()),
    }


def nan_to_none(value: Any) -> Any:
    """Recursively replace NaN/inf floats with None (JSON has no NaN) and numpy scalars
    with Python ones, so the result passes ``json.dumps(..., allow_nan=False)``."""
    if isinstance(value, dict):
        return {str(k): nan_to_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [nan_to_none(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


SCALAR_METRICS: dict[str, MetricFn] = {
    "accuracy": accuracy,
    "mean_confidence": mean_confidence,
    "ece": ece,
    "auroc": auroc,
    "brier": brier,
    "nll": nll,
}


def summarize(p: ArrayLike, y: ArrayLike, *, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """All metrics for one method on one eval set, JSON-serializable (NaN becomes None).

    Returns::

        {"n": int, "n_correct": int,
         "accuracy" | "mean_confidence" | "ece" | "auroc" | "brier" | "nll":
             {"value": float | None, "ci": [low | None, high | None]},
         "auroc_note": str | None,           # why AUROC is None, if it is
         "reliability": [reliability_bins()], "histogram": confidence_histogram(),
         "bootstrap": {"n": n_boot, "seed": seed, "alpha": 0.05}}
    """
    pa, ya = as_arrays(p, y)
    out: dict[str, Any] = {"n": int(pa.size), "n_correct": int(ya.sum())}
    for name, fn in SCALAR_METRICS.items():
        lo, hi = bootstrap_ci(fn, pa, ya, n=n_boot, seed=seed)
        out[name] = {"value": fn(pa, ya), "ci": [lo, hi]}
    out["auroc_note"] = auroc_undefined_reason(ya)
    out["reliability"] = reliability_bins(pa, ya)
    out["histogram"] = confidence_histogram(pa)
    out["bootstrap"] = {"n": n_boot, "seed": seed, "alpha": 0.05}
    result: dict[str, Any] = nan_to_none(out)
    return result
