"""AUROC within sources, so that telling one source from another earns nothing.

Pooled over sources of very different accuracy, a score that only knows the source (a
per-source base rate, no model at all) reaches a high AUROC. The stratified AUROC is the
size-weighted mean of the AUROC inside each source that has both classes; its paired
bootstrap resamples items within each source, the same items for both methods.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike


def _strata(strata: Sequence[str]) -> dict[str, np.ndarray]:
    keys = np.asarray(strata)
    return {s: np.flatnonzero(keys == s) for s in dict.fromkeys(strata)}


def stratified_auroc(p: ArrayLike, y: ArrayLike, strata: Sequence[str]) -> float:
    """Size-weighted mean of per-stratum AUROC over strata with both classes (NaN if none)."""
    from sklearn.metrics import roc_auc_score

    pa, ya = np.asarray(p, dtype=np.float64), np.asarray(y, dtype=np.float64)
    total, weight = 0.0, 0
    for rows in _strata(strata).values():
        yy = ya[rows]
        if 0 < yy.sum() < len(yy):
            total += len(rows) * float(roc_auc_score(yy, pa[rows]))
            weight += len(rows)
    return total / weight if weight else math.nan


def paired_stratified_auroc_diff(
    p_a: ArrayLike,
    p_b: ArrayLike,
    y: ArrayLike,
    strata: Sequence[str],
    *,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, float]:
    """Stratified AUROC(a) − AUROC(b) with a paired, within-stratum percentile bootstrap.

    Returns ``{"estimate", "ci_low", "ci_high", "n_valid"}``.
    """
    pa, pb = np.asarray(p_a, dtype=np.float64), np.asarray(p_b, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    groups = list(_strata(strata).values())
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(n):
        rows = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        labels = [strata[i] for i in rows]
        a = stratified_auroc(pa[rows], ya[rows], labels)
        b = stratified_auroc(pb[rows], ya[rows], labels)
        if math.isfinite(a) and math.isfinite(b):
            diffs.append(a - b)
    estimate = stratified_auroc(pa, ya, strata) - stratified_auroc(pb, ya, strata)
    if not diffs:
        return {"estimate": estimate, "ci_low": math.nan, "ci_high": math.nan, "n_valid": 0}
    lo, hi = np.percentile(diffs, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"estimate": estimate, "ci_low": float(lo), "ci_high": float(hi), "n_valid": len(diffs)}
