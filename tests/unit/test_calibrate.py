"""Temperature scaling on synthetic gaps with a known temperature."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit

from adapters import calibrate
from service.calibration import metrics
from service.calibration import query as confidence


def _synthetic(t_true: float, n: int = 100_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = rng.normal(0.0, 4.0, size=n)
    y = (rng.uniform(size=n) < expit(g / t_true)).astype(float)
    return g, y


@pytest.mark.parametrize("t_true", [0.5, 2.5])
def test_fit_recovers_known_temperature(t_true: float) -> None:
    g, y = _synthetic(t_true)
    fit = calibrate.fit_temperature(g, y)
    assert abs(fit.temperature - t_true) < 0.05 * t_true
    assert not fit.at_bound
    assert fit.nll_after <= fit.nll_before
    assert fit.ece_after < fit.ece_before
    assert fit.ece_after < 0.01
    assert fit.n == g.size


def test_fit_at_t_one_keeps_nll() -> None:
    g, y = _synthetic(1.0, seed=5)
    fit = calibrate.fit_temperature(g, y)
    assert fit.temperature == pytest.approx(1.0, abs=0.05)
    assert fit.nll_after == pytest.approx(fit.nll_before, abs=1e-4)


def test_calibration_keeps_ranking() -> None:
    g, y = _synthetic(2.5, n=2000, seed=1)
    t = calibrate.fit_temperature(g, y).temperature
    before = calibrate.apply_temperature(g, 1.0)
    after = calibrate.apply_temperature(g, t)
    assert metrics.auroc(after, y) == pytest.approx(metrics.auroc(before, y))
    # strict ordering preserved wherever the gaps differ
    order = np.argsort(g)
    assert np.all(np.diff(after[order]) >= 0)


def test_apply_temperature_matches_service_math() -> None:
    g = np.array([-800.0, -3.0, 0.0, 0.7, 40.0])
    out = calibrate.apply_temperature(g, 1.7)
    expected = [confidence.sigmoid(x / 1.7) for x in g]
    np.testing.assert_allclose(out, expected, rtol=1e-12)
    lp_no, lp_yes = -1.2, -0.4
    assert calibrate.apply_temperature([lp_yes - lp_no], 1.7)[0] == pytest.approx(
        confidence.confidence(lp_no, lp_yes, temperature=1.7)
    )


def test_all_labels_equal_hits_bound_finite() -> None:
    g = np.array([1.0, 2.0, 5.0, 50.0])
    fit = calibrate.fit_temperature(g, np.ones(4))
    assert fit.temperature == pytest.approx(calibrate.T_MIN)
    assert fit.at_bound
    assert np.isfinite(fit.nll_after) and fit.nll_after <= fit.nll_before


def test_huge_gaps_are_stable() -> None:
    g = np.array([-1e4, -500.0, 500.0, 1e4, 3.0, -3.0])
    y = np.array([0, 1, 0, 1, 1, 0], dtype=float)
    fit = calibrate.fit_temperature(g, y)
    assert np.isfinite(fit.nll_before) and np.isfinite(fit.nll_after)
    assert calibrate.T_MIN <= fit.temperature <= calibrate.T_MAX
    # confident misses dominate: flattening (large T) must beat T = 1
    assert fit.temperature > 10
    assert fit.nll_after < fit.nll_before


def test_invalid_inputs() -> None:
    with pytest.raises(ValueError):
        calibrate.apply_temperature([1.0], 0.0)
    with pytest.raises(ValueError):
        calibrate.fit_temperature([1.0, np.inf], [1, 0])
    with pytest.raises(ValueError):
        calibrate.fit_temperature([1.0, 2.0], [1, 2])
    with pytest.raises(ValueError):
        calibrate.fit_temperature([1.0, 2.0], [1, 0], t_min=2.0, t_max=1.0)
    assert set(calibrate.fit_temperature([1.0, -1.0], [1, 0]).to_dict()) >= {"temperature", "ece_after"}
