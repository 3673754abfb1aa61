"""Selective answering with a stated error rate: which confidence threshold to answer above.

A client answers when the confidence is at least a threshold λ and abstains below it. Its
*selective risk* is the error rate among answered items, R(λ) = P(wrong | confidence >= λ).
Given labelled confidences (p, y) from the same adapter version and method, `choose_threshold`
returns the lowest λ whose risk is <= r with probability at least 1 - δ over the labelled
sample (learn-then-test, Angelopoulos et al. 2021):

- every candidate λ on a fixed grid is a hypothesis H_λ: R(λ) > r, tested with the exact
  binomial (Clopper-Pearson) upper bound on the error rate among the items it answers;
- the candidates are scanned from the highest threshold down and the scan stops at the
  first one that fails (fixed-sequence testing). A false selection needs the first true null
  in that order to be rejected, which happens with probability <= δ, so no multiple-testing
  correction is needed however fine the grid.

Candidates that answer too few items to pass at a realistic error rate (`scan_start`) are
skipped, not failed. Which ones those are depends on the confidences only, never on the labels: given the
confidences the labels are independent draws, and the scan order stays fixed, so the argument
above holds conditionally on them. (Given the confidences, the error count is Poisson-binomial;
its lower tail beyond the mean is thinner than the binomial's, so the exact binomial bound
stays conservative.) tests/unit/test_risk.py checks the guarantee by simulation.

Pure functions of arrays: shared by the service (thresholds from live labels) and anything
offline that wants the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

from service.calibration.metrics import as_arrays

# The candidate thresholds: fixed in advance (0.00, 0.01, …, 1.00), scanned from the top.
GRID = tuple(round(k / 100, 2) for k in range(100, -1, -1))
DEFAULT_DELTA = 0.05
MAX_LABELS = 10**12  # a cap on label counts computed for tiny targets (keeps them integers)


@dataclass(frozen=True)
class RiskPoint:
    """One threshold of the risk-coverage curve."""

    threshold: float
    answered: int  # labelled items with confidence >= threshold
    errors: int  # of those, how many were wrong
    coverage: float  # answered / all labelled items
    error_rate: float | None  # errors / answered (None when nothing is answered)
    risk_upper_bound: float  # (1 - δ) Clopper-Pearson upper bound on the error rate (1.0 if none)


@dataclass(frozen=True)
class ThresholdChoice:
    """The selected threshold and what it rests on."""

    threshold: float
    target_error_rate: float
    delta: float
    n_labels: int  # labelled items the choice rests on
    coverage: float  # expected fraction answered (on the labelled items)
    answered: int
    error_rate: float
    risk_upper_bound: float

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class NotEnoughLabelsError(ValueError):
    """No threshold meets the target with the labels at hand; `needed` says how many
    labelled items would (an estimate from the observed error rate, see `labels_needed`)."""

    def __init__(self, message: str, *, n_labels: int, needed: int | None) -> None:
        super().__init__(message)
        self.n_labels = n_labels
        self.needed = needed


def _check(target: float, delta: float) -> None:
    if not 0.0 < target < 1.0:
        raise ValueError(f"target error rate must be in (0, 1), got {target}")
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def error_rate_upper_bound(errors: int, n: int, delta: float) -> float:
    """One-sided (1 - δ) Clopper-Pearson upper bound on a binomial error rate: the largest
    rate under which `errors` or fewer errors in `n` items still has probability >= δ."""
    from scipy.stats import beta

    if n == 0 or errors >= n:
        return 1.0
    return float(beta.ppf(1.0 - delta, errors + 1, n - errors))


def min_answered(target: float, delta: float) -> int:
    """Fewest answered items for which zero errors can pass: (1 - r)^n <= δ."""
    _check(target, delta)
    return math.ceil(min(math.log(delta) / math.log1p(-target), MAX_LABELS))


def scan_start(target: float, delta: float) -> int:
    """Fewest answered items at which an error rate of half the target would pass.

    The scan skips candidates answering fewer: just above `min_answered` a single error
    fails the test and would end the scan at the very top of the grid. A count of answered
    items depends on the confidences only, so skipping by it keeps the guarantee.
    """
    return _answered_needed(target / 2, target, delta, start=min_answered(target, delta))


def risk_coverage(p: ArrayLike, y: ArrayLike, *, delta: float = DEFAULT_DELTA) -> list[RiskPoint]:
    """Every grid threshold, highest first: answered, errors, coverage, error rate and bound."""
    pa, ya = as_arrays(p, y)
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")
    order = np.argsort(-pa, kind="stable")
    sorted_p, wrong = pa[order], np.cumsum(1.0 - ya[order])
    points = []
    for threshold in GRID:
        # Items answered at this threshold: the prefix of the sorted confidences >= it.
        answered = int(np.searchsorted(-sorted_p, -threshold, side="right"))
        errors = int(np.rint(wrong[answered - 1])) if answered else 0
        points.append(
            RiskPoint(
                threshold=threshold,
                answered=answered,
                errors=errors,
                coverage=answered / pa.size,
                error_rate=errors / answered if answered else None,
                risk_upper_bound=error_rate_upper_bound(errors, answered, delta),
            )
        )
    return points


def choose_threshold(
    p: ArrayLike, y: ArrayLike, *, target: float, delta: float = DEFAULT_DELTA
) -> ThresholdChoice:
    """The lowest grid threshold whose error rate among answered items is <= `target` with
    probability >= 1 - `delta` (fixed-sequence learn-then-test, see the module docstring).

    Raises:
        NotEnoughLabelsError: no threshold passes; carries how many labels would be needed.
        ValueError: bad arrays, target or delta.
    """
    _check(target, delta)
    pa, ya = as_arrays(p, y)
    points = risk_coverage(pa, ya, delta=delta)
    chosen = _scan(points, target, scan_start(target, delta))
    if chosen is None:
        needed = labels_needed(pa, ya, target=target, delta=delta)
        why = (
            f"no confidence threshold keeps the error rate among answered items <= {target} at "
            f"level delta={delta} with {pa.size} labelled items"
        )
        more = f"; about {needed} would be needed" if needed else "; the observed error rate is too high"
        raise NotEnoughLabelsError(
            why + more,
            n_labels=int(pa.size),
            needed=needed,
        )
    assert chosen.error_rate is not None  # answered >= floor >= 1
    return ThresholdChoice(
        threshold=chosen.threshold,
        target_error_rate=target,
        delta=delta,
        n_labels=int(pa.size),
        coverage=chosen.coverage,
        answered=chosen.answered,
        error_rate=chosen.error_rate,
        risk_upper_bound=chosen.risk_upper_bound,
    )


def _scan(points: list[RiskPoint], target: float, floor: int) -> RiskPoint | None:
    """Fixed-sequence test down the grid: the last candidate passed before the first failure."""
    chosen = None
    for point in points:
        if point.answered < floor:
            continue  # untestable here (decided by the confidences alone): skip, don't stop
        if point.risk_upper_bound > target:
            break
        chosen = point
    return chosen


def labels_needed(
    p: ArrayLike | None, y: ArrayLike | None, *, target: float, delta: float = DEFAULT_DELTA
) -> int | None:
    """How many labelled items would let the scan select a threshold if the observed coverage
    and error rate of every candidate held: the smallest multiple of the sample that passes.

    With no labels, `scan_start` (what the first candidate must answer). None when even a
    hundredfold sample would not pass (an observed error rate at or above the target stops
    the scan before any candidate passes; more labels would not help).
    """
    _check(target, delta)
    floor = scan_start(target, delta)
    if p is None or y is None or np.asarray(p).size == 0:
        return floor
    pa, ya = as_arrays(p, y)
    observed = risk_coverage(pa, ya, delta=delta)

    def passes(n: int) -> bool:
        scale = n / pa.size
        scaled = []
        for pt in observed:
            answered = round(pt.answered * scale)
            errors = round((pt.error_rate or 0.0) * answered)
            bound = error_rate_upper_bound(errors, answered, delta)
            scaled.append(RiskPoint(pt.threshold, answered, errors, pt.coverage, pt.error_rate, bound))
        return _scan(scaled, target, floor) is not None

    hi = pa.size + 1
    while not passes(hi):
        if hi > 100 * pa.size:
            return None
        hi *= 2
    lo = max(pa.size + 1, hi // 2)
    while lo < hi:  # bisection (the bounds fall as n grows, up to rounding)
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if passes(mid) else (mid + 1, hi)
    return hi


def _answered_needed(rate: float, target: float, delta: float, *, start: int) -> int:
    """Smallest n >= start with the bound at errors = round(rate * n) <= target (doubling, then
    bisection: the bound at a fixed rate falls as n grows)."""

    def passes(n: int) -> bool:
        return error_rate_upper_bound(round(rate * n), n, delta) <= target

    hi = start
    while not passes(hi):
        hi *= 2
    lo = max(start, hi // 2)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if passes(mid) else (mid + 1, hi)
    return hi
