"""Selective-risk control (service.calibration.risk): hand-made cases and a simulation with
known ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from service.calibration import risk


def test_upper_bound_is_the_exact_binomial_one() -> None:
    from scipy.stats import binom

    bound = risk.error_rate_upper_bound(3, 50, 0.05)
    # At the bound, seeing 3 or fewer errors has probability exactly delta.
    assert binom.cdf(3, 50, bound) == pytest.approx(0.05, abs=1e-9)
    assert risk.error_rate_upper_bound(0, 0, 0.05) == 1.0
    assert risk.error_rate_upper_bound(5, 5, 0.05) == 1.0


def test_min_answered_is_where_zero_errors_first_pass() -> None:
    n = risk.min_answered(0.05, 0.1)
    assert risk.error_rate_upper_bound(0, n, 0.1) <= 0.05 < risk.error_rate_upper_bound(0, n - 1, 0.1)


def test_risk_coverage_counts_items_at_or_above_each_threshold() -> None:
    p = [0.95, 0.9, 0.5, 0.2]
    y = [1, 0, 1, 0]
    points = {pt.threshold: pt for pt in risk.risk_coverage(p, y)}
    assert (points[0.9].answered, points[0.9].errors, points[0.9].coverage) == (2, 1, 0.5)
    assert (points[0.5].answered, points[0.5].errors) == (3, 1)
    assert points[1.0].answered == 0 and points[1.0].error_rate is None
    assert points[0.0].coverage == 1.0 and points[0.0].error_rate == 0.5


def test_chooses_the_lowest_threshold_that_passes() -> None:
    # 400 confident right answers above 0.8, then 400 coin flips below.
    p = np.r_[np.full(400, 0.9), np.full(400, 0.3)]
    y = np.r_[np.ones(400), np.arange(400) % 2]
    choice = risk.choose_threshold(p, y, target=0.05, delta=0.05)
    # The lowest grid threshold that still leaves the coin flips out (0.30 would take them in).
    assert choice.threshold == 0.31
    assert choice.coverage == 0.5 and choice.answered == 400 and choice.error_rate == 0.0
    assert choice.risk_upper_bound <= 0.05 and choice.n_labels == 800


def test_too_few_labels_says_how_many_would_do() -> None:
    p = np.full(20, 0.9)
    y = np.ones(20)
    with pytest.raises(risk.NotEnoughLabelsError) as caught:
        risk.choose_threshold(p, y, target=0.05, delta=0.05)
    assert caught.value.n_labels == 20
    needed = caught.value.needed
    assert needed == risk.scan_start(0.05, 0.05)
    # ... and that many does pass.
    risk.choose_threshold(np.full(needed, 0.9), np.ones(needed), target=0.05, delta=0.05)


def test_no_labels_needed_count_when_every_rate_is_above_target() -> None:
    p = np.linspace(0.0, 1.0, 500)
    y = (np.arange(500) + 1) % 2  # alternating, the most confident one wrong: rates ~0.5
    with pytest.raises(risk.NotEnoughLabelsError) as caught:
        risk.choose_threshold(p, y, target=0.05)
    assert caught.value.needed is None


def test_needed_estimate_is_enough_for_a_sample_with_the_same_rates() -> None:
    rng = np.random.default_rng(3)
    p = rng.uniform(size=60)
    y = (rng.uniform(size=60) < p).astype(float)
    with pytest.raises(risk.NotEnoughLabelsError) as caught:
        risk.choose_threshold(p, y, target=0.1, delta=0.1)
    needed = caught.value.needed
    assert needed is not None and needed > 60
    big_p = rng.uniform(size=2 * needed)
    big_y = (rng.uniform(size=2 * needed) < big_p).astype(float)
    risk.choose_threshold(big_p, big_y, target=0.1, delta=0.1)  # does not raise


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_simulated_guarantee_and_coverage(power: float) -> None:
    """Confidences c ~ U(0, 1) and P(correct | c) = c^power (calibrated for power 1,
    overconfident for 2). Then the true selective risk at λ is
    R(λ) = 1 - (1 - λ^(k+1)) / ((k+1)(1 - λ)) and the true coverage is 1 - λ, exactly.
    Over many calibration draws, R(chosen λ) > r must happen in at most δ of them, and the
    reported coverage must match the realized one on fresh data."""
    rng = np.random.default_rng(int(power))
    target, delta, n, draws = 0.1, 0.1, 3000, 300
    k = power

    def true_risk(lam: float) -> float:
        return 1.0 - (1.0 - lam ** (k + 1)) / ((k + 1) * (1.0 - lam)) if lam < 1 else 0.0

    violations, refused, coverage_gaps, realized_risks = 0, 0, [], []
    for _ in range(draws):
        c = rng.uniform(size=n)
        y = (rng.uniform(size=n) < c**k).astype(float)
        try:
            choice = risk.choose_threshold(c, y, target=target, delta=delta)
        except risk.NotEnoughLabelsError:
            refused += 1  # no threshold: the server answers 409, which never violates
            continue
        violations += true_risk(choice.threshold) > target
        fresh = rng.uniform(size=n)
        fresh_y = rng.uniform(size=n) < fresh**k
        answered = fresh >= choice.threshold
        coverage_gaps.append(choice.coverage - answered.mean())
        realized_risks.append(1.0 - fresh_y[answered].mean())
    assert violations / draws <= delta
    # Not vacuous: most draws select a threshold. (For power 2 only the top ~12% of confidences
    # qualify, and a noisy start of the scan ends it in ~10% of the draws.)
    assert refused / draws < 0.15
    # Coverage: unbiased (mean gap ~ 0; the standard error of one gap is ~0.013 at n=3000).
    assert abs(float(np.mean(coverage_gaps))) < 0.005
    assert float(np.mean(np.abs(coverage_gaps))) < 0.03
    # Realized error among answered items on fresh data stays under r in >= 1 - δ of draws
    # (fresh-sample noise included, so this is looser than the population statement).
    assert float(np.mean(np.array(realized_risks) > target + 0.02)) <= delta


def test_guarantee_is_not_met_by_the_naive_plug_in() -> None:
    """The same simulation picking the lowest threshold whose *observed* rate is <= r
    violates far more often than δ: the bound is what buys the guarantee (the test of the
    simulation itself can fail)."""
    rng = np.random.default_rng(7)
    target, n, draws = 0.1, 300, 300
    violations = 0
    for _ in range(draws):
        c = rng.uniform(size=n)
        y = (rng.uniform(size=n) < c).astype(float)
        ok = [pt for pt in risk.risk_coverage(c, y) if pt.error_rate is not None and pt.error_rate <= target]
        lam = min(pt.threshold for pt in ok)
        violations += (1 - lam) / 2 > target
    assert violations / draws > 0.3
