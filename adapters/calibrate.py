"""Temperature scaling of the uncertainty query's logit gap.

The served confidence is ``sigmoid(g / T)`` with ``g = logit(yes) - logit(no)`` (see
:func:`service.calibration.query.confidence`). One scalar ``T`` is fitted on held-out labelled
items by minimizing NLL; it rescales every gap by the same positive factor, so it changes
calibration but never the ranking (AUROC is unchanged).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike

from service.calibration.metrics import FloatArray, ece

# Wide enough for any sane adapter (T near 1); the bounds keep the fit finite when the
# labels are all equal or perfectly separated, where the unbounded optimum is T -> 0.
T_MIN = 0.05
T_MAX = 100.0


@dataclass(frozen=True)
class TemperatureFit:
    """Result of :func:`fit_temperature`; NLL in nats per item, ECE with 10 bins."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    n: int
    at_bound: bool  # the optimum hit T_MIN/T_MAX: data too separable or too few to pin T down

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def _validate(g: ArrayLike, y: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Finite 1-D gaps and matching binary labels, or ValueError."""
    ga = np.asarray(g, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if ga.ndim != 1 or ga.shape != ya.shape or ga.size == 0:
        raise ValueError(f"g and y must be non-empty 1-D arrays of one length, got {ga.shape}, {ya.shape}")
    if not np.all(np.isfinite(ga)):
        raise ValueError("logit gaps must be finite")
    if not np.all((ya == 0.0) | (ya == 1.0)):
        raise ValueError("y must hold binary correctness labels (0 or 1)")
    return ga, ya


def _check_temperature(temperature: float) -> None:
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a positive finite number, got {temperature}")


def apply_temperature(g: ArrayLike, temperature: float) -> FloatArray:
    """Confidences ``sigmoid(g / T)``, the vectorized twin of service.calibration.query.confidence.

    Uses scipy's ``expit``, which is stable for large |g| as service.calibration.query.sigmoid is.
    """
    from scipy.special import expit

    _check_temperature(temperature)
    return np.asarray(expit(np.asarray(g, dtype=np.float64) / temperature), dtype=np.float64)


def scaled_nll(g: ArrayLike, y: ArrayLike, temperature: float) -> float:
    """Mean NLL of ``sigmoid(g / T)``, computed in logit space.

    ``-log sigmoid(z) = logaddexp(0, -z)`` stays exact for huge gaps, where going through
    probabilities would round to 0 or 1 and need clipping.
    """
    _check_temperature(temperature)
    ga, ya = _validate(g, y)
    z = ga / temperature
    return float(np.mean(np.logaddexp(0.0, z) - ya * z))


def fit_temperature(
    g: ArrayLike, y: ArrayLike, *, t_min: float = T_MIN, t_max: float = T_MAX
) -> TemperatureFit:
    """Fit ``T`` in [t_min, t_max] minimizing NLL of ``sigmoid(g / T)`` against ``y``.

    Searches over log T (the scale the NLL varies on) with bounded Brent minimization. NLL
    is convex in 1/T, hence unimodal in log T, so the bounded search finds the optimum.

    Raises:
        ValueError: bad inputs or bounds.
    """
    from scipy.optimize import minimize_scalar

    ga, ya = _validate(g, y)
    if not 0 < t_min < t_max or not math.isfinite(t_max):
        raise ValueError(f"need 0 < t_min < t_max < inf, got {t_min}, {t_max}")
    lo, hi = math.log(t_min), math.log(t_max)
    res = minimize_scalar(
        lambda log_t: scaled_nll(ga, ya, math.exp(log_t)),
        bounds=(lo, hi),
        method="bounded",
        options={"xatol": 1e-6},
    )
    temperature = float(math.exp(float(res.x)))
    # Brent never evaluates the end points exactly; prefer one if it is at least as good,
    # which is where the optimum of all-equal or separable labels lies.
    for edge in (t_min, t_max):
        if scaled_nll(ga, ya, edge) <= scaled_nll(ga, ya, temperature):
            temperature = edge
    at_bound = any(math.isclose(temperature, edge, rel_tol=1e-3) for edge in (t_min, t_max))
    return TemperatureFit(
        temperature=temperature,
        nll_before=scaled_nll(ga, ya, 1.0),
        nll_after=scaled_nll(ga, ya, temperature),
        ece_before=ece(apply_temperature(ga, 1.0), ya),
        ece_after=ece(apply_temperature(ga, temperature), ya),
        n=int(ga.size),
        at_bound=at_bound,
    )
