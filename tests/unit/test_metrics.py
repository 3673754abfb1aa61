"""Metrics against values worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from service.calibration import metrics


def test_ece_hand_example_last_bin_includes_one() -> None:
    p = [0.05, 0.15, 0.15, 0.85, 0.85, 0.95, 1.0]
    y = [0, 0, 1, 1, 1, 1, 0]
    # bin 0 [0.0,0.1): {0.05}, acc 0,   conf 0.05  -> |0 - 0.05|    = 0.05,  weight 1/7
    # bin 1 [0.1,0.2): {0.15,0.15}, acc 0.5, conf 0.15 -> 0.35,          weight 2/7
    # bin 8 [0.8,0.9): {0.85,0.85}, acc 1,   conf 0.85 -> 0.15,          weight 2/7
    # bin 9 [0.9,1.0]: {0.95,1.0},  acc 0.5, conf 0.975 -> 0.475,        weight 2/7
    # ECE = (1*0.05 + 2*0.35 + 2*0.15 + 2*0.475) / 7 = 2.0 / 7
    # (had 1.0 got a bin of its own, ECE would be 2.1 / 7)
    assert metrics.ece(p, y) == pytest.approx(2.0 / 7)


def test_ece_perfectly_calibrated_is_zero() -> None:
    p = [0.25] * 4 + [0.75] * 4
    y = [1, 0, 0, 0, 1, 1, 1, 0]
    assert metrics.ece(p, y) == pytest.approx(0.0)


def test_auroc_hand_example() -> None:
    # positives {0.9, 0.4}, negatives {0.8, 0.3}: pairs ranked right 0.9>0.8, 0.9>0.3, 0.4>0.3;
    # wrong 0.4<0.8 -> 3/4
    assert metrics.auroc([0.9, 0.8, 0.4, 0.3], [1, 0, 1, 0]) == pytest.approx(0.75)
    # a tie counts one half: positive 0.6 vs negatives {0.6, 0.2} -> (0.5 + 1) / 2
    assert metrics.auroc([0.6, 0.6, 0.2], [1, 0, 0]) == pytest.approx(0.75)


def test_auroc_one_class_is_nan_with_reason() -> None:
    assert math.isnan(metrics.auroc([0.2, 0.9], [1, 1]))
    assert metrics.auroc_undefined_reason([1, 1]) == metrics.AUROC_ONE_CLASS
    assert metrics.auroc_undefined_reason([0, 1]) is None


def test_brier_hand_example() -> None:
    # ((0.9-1)^2 + (0.2-0)^2 + (0.6-0)^2) / 3 = (0.01 + 0.04 + 0.36) / 3
    assert metrics.brier([0.9, 0.2, 0.6], [1, 0, 0]) == pytest.approx(0.41 / 3)


def test_nll_hand_example_and_clipping() -> None:
    # -(ln 0.8 + ln(1 - 0.25)) / 2
    assert metrics.nll([0.8, 0.25], [1, 0]) == pytest.approx(-(math.log(0.8) + math.log(0.75)) / 2)
    # a confident miss is clipped to about -ln(1e-15) (1 - 1e-15 rounds in float64), not infinity
    assert metrics.nll([1.0], [0]) == pytest.approx(-math.log(metrics.NLL_CLIP), rel=1e-4)


def test_accuracy_and_validation() -> None:
    assert metrics.accuracy([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 1]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        metrics.accuracy([0.1, 1.2], [0, 1])
    with pytest.raises(ValueError):
        metrics.accuracy([0.1, 0.2], [0, 2])
    with pytest.raises(ValueError):
        metrics.accuracy([0.1], [0, 1])
    with pytest.raises(ValueError):
        metrics.accuracy([], [])


def test_reliability_bins() -> None:
    p = [0.05, 0.15, 0.15, 0.85, 1.0]
    y = [0, 0, 1, 1, 1]
    bins = metrics.reliability_bins(p, y)
    assert len(bins) == 10
    assert [b["count"] for b in bins] == [1, 2, 0, 0, 0, 0, 0, 0, 1, 1]
    assert bins[1]["accuracy"] == pytest.approx(0.5)
    assert bins[1]["mean_confidence"] == pytest.approx(0.15)
    assert bins[2]["accuracy"] is None
    assert bins[9]["mean_confidence"] == pytest.approx(1.0)
    assert (bins[9]["lower"], bins[9]["upper"]) == (pytest.approx(0.9), pytest.approx(1.0))


def test_confidence_histogram() -> None:
    h = metrics.confidence_histogram([0.0, 0.05, 0.55, 1.0, 1.0], bins=10)
    assert len(h["bin_edges"]) == 11
    assert h["bin_edges"][0] == 0.0 and h["bin_edges"][-1] == 1.0
    assert h["counts"] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]


def _random_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(size=n)
    y = (rng.uniform(size=n) < p).astype(float)
    return p, y


def test_bootstrap_deterministic_and_contains_point() -> None:
    p, y = _random_data(300, 1)
    p = 0.5 + 0.8 * (p - 0.5)  # under-confident, so ECE is far from its upward small-sample bias
    for fn in (metrics.accuracy, metrics.ece, metrics.auroc, metrics.brier, metrics.nll):
        a = metrics.bootstrap_ci(fn, p, y, n=200, seed=7)
        b = metrics.bootstrap_ci(fn, p, y, n=200, seed=7)
        assert a == b
        lo, hi = a
        assert lo < hi
        assert lo <= fn(p, y) <= hi
    assert metrics.bootstrap_ci(metrics.accuracy, p, y, n=200, seed=8) != metrics.bootstrap_ci(
        metrics.accuracy, p, y, n=200, seed=7
    )


def test_bootstrap_width_shrinks_with_alpha() -> None:
    p, y = _random_data(300, 2)
    lo95, hi95 = metrics.bootstrap_ci(metrics.accuracy, p, y, n=500, alpha=0.05)
    lo50, hi50 = metrics.bootstrap_ci(metrics.accuracy, p, y, n=500, alpha=0.5)
    assert hi50 - lo50 < hi95 - lo95


def test_paired_auroc_diff() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=400).astype(float)
    good = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.1, size=400), 0, 1)
    noise = rng.uniform(size=400)
    d = metrics.paired_bootstrap_auroc_diff(good, noise, y, n=300, seed=0)
    assert d["estimate"] == pytest.approx(metrics.auroc(good, y) - metrics.auroc(noise, y))
    assert d["ci_low"] <= d["estimate"] <= d["ci_high"]
    assert d["ci_low"] > 0.10
    assert d["n_valid"] == 300
    same = metrics.paired_bootstrap_auroc_diff(good, good, y, n=100, seed=0)
    assert (same["estimate"], same["ci_low"], same["ci_high"]) == (0.0, 0.0, 0.0)


def test_summarize_json_ready_with_one_class() -> None:
    s = metrics.summarize([0.9, 0.8, 0.7], [1, 1, 1], n_boot=50)
    json.dumps(s, allow_nan=False)
    assert s["auroc"]["value"] is None
    assert s["auroc"]["ci"] == [None, None]
    assert s["auroc_note"] == metrics.AUROC_ONE_CLASS
    assert s["n"] == 3 and s["n_correct"] == 3
    assert s["accuracy"]["value"] == 1.0
    assert s["ece"]["value"] == pytest.approx(0.2)


def test_summarize_keys() -> None:
    p, y = _random_data(100, 4)
    s = metrics.summarize(p, y, n_boot=30)
    for key in ("accuracy", "mean_confidence", "ece", "auroc", "brier", "nll"):
        assert set(s[key]) == {"value", "ci"}
        lo, hi = s[key]["ci"]
        assert lo < hi
        # ECE of well-calibrated data is biased upward under resampling: its interval may sit above it
        if key != "ece":
            assert lo <= s[key]["value"] <= hi
    assert s["auroc_note"] is None
    assert sum(b["count"] for b in s["reliability"]) == 100
    assert sum(s["histogram"]["counts"]) == 100


def test_bootstrap_fast_path_matches_generic_path() -> None:
    """The vectorized resample metrics must give the intervals the sklearn versions give."""
    rng = np.random.default_rng(9)
    p = np.round(rng.uniform(size=150), 1)  # rounding makes ties and exact bin edges
    p[:3] = [0.0, 1.0, 1.0]
    y = (rng.uniform(size=150) < p).astype(float)
    for fn in (
        metrics.accuracy,
        metrics.mean_confidence,
        metrics.ece,
        metrics.auroc,
        metrics.brier,
        metrics.nll,
    ):
        fast = metrics.bootstrap_ci(fn, p, y, n=100, seed=3)
        wrapped = lambda a, b, fn=fn: fn(a, b)  # noqa: E731  (a new function: not in the fast table)
        slow = metrics.bootstrap_ci(wrapped, p, y, n=100, seed=3)
        np.testing.assert_allclose(fast, slow, rtol=1e-9, err_msg=fn.__name__)


def test_bootstrap_auroc_drops_one_class_resamples() -> None:
    # 1 positive in 20 items: many resamples miss it, and those must not count as AUROC 0 or crash
    p = np.linspace(0.0, 1.0, 20)
    y = np.zeros(20)
    y[-1] = 1
    lo, hi = metrics.bootstrap_ci(metrics.auroc, p, y, n=200, seed=0)
    assert lo == hi == 1.0
    assert all(math.isnan(v) for v in metrics.bootstrap_ci(metrics.auroc, p, np.zeros(20), n=20))
