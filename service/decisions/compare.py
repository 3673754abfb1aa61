"""Served confidences against a shadow candidate's, on the same labelled responses."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from service.api.protocol import Method, MetricDifference, ShadowComparison
from service.calibration import metrics as calib
from service.feedback.store import ShadowPair

N_BOOT = 500  # resamples of the paired intervals: read in a request, kept cheap


def _summary(p: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    auroc = calib.auroc(p, y)
    return {
        "ece": calib.ece(p, y),
        "brier": calib.brier(p, y),
        "auroc": None if math.isnan(auroc) else auroc,
    }


def _difference(metric: calib.MetricFn, a: np.ndarray, b: np.ndarray, y: np.ndarray) -> MetricDifference:
    diff = calib.nan_to_none(calib.paired_bootstrap_diff(metric, a, b, y, n=N_BOOT))
    return MetricDifference(estimate=diff["estimate"], ci_low=diff["ci_low"], ci_high=diff["ci_high"])


def shadow_comparisons(pairs: list[ShadowPair]) -> list[ShadowComparison]:
    """One comparison per candidate version and the method it read with, in name@version
    order (a candidate reads with one method per served method, so one comparison for it in
    a report of one served method)."""
    by_candidate: defaultdict[tuple[str, str], list[ShadowPair]] = defaultdict(list)
    for pair in pairs:
        by_candidate[(f"{pair.candidate_adapter}@{pair.candidate_version}", pair.shadow_method)].append(pair)
    out = []
    for (candidate, method), rows in sorted(by_candidate.items()):
        served = np.array([r.served.confidence for r in rows])
        shadow = np.array([r.shadow_confidence for r in rows])
        y = np.array([float(bool(r.served.correct)) for r in rows])
        out.append(
            ShadowComparison(
                candidate=candidate,
                method=Method(method),
                n=len(rows),
                served=_summary(served, y),
                shadow=_summary(shadow, y),
                ece_difference=_difference(calib.ece, shadow, served, y),
                brier_difference=_difference(calib.brier, shadow, served, y),
            )
        )
    return out
