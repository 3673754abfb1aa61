"""PSI and the drift window, on hand-made histograms."""

from __future__ import annotations

import math

import pytest

from service.lora.manifest import ReferenceHistogram
from service.monitoring.drift import PSI_FLOOR, DriftWindow, psi

EDGES = [k / 10 for k in range(11)]


def test_psi_of_identical_distributions_is_zero_whatever_the_scale():
    assert psi([1, 2, 3], [10, 20, 30]) == pytest.approx(0.0)


def test_psi_matches_the_formula_written_out():
    actual, expected = [30, 70], [50, 50]
    by_hand = (0.3 - 0.5) * math.log(0.3 / 0.5) + (0.7 - 0.5) * math.log(0.7 / 0.5)
    assert psi(actual, expected) == pytest.approx(by_hand)
    assert psi(actual, expected) == pytest.approx(psi(expected, actual))  # PSI is symmetric


def test_empty_bins_are_floored_not_infinite():
    value = psi([0, 10], [10, 0])
    assert math.isfinite(value)
    # Each empty bin counts as PSI_FLOOR: 2 * (1 - floor) * ln(1 / floor), about 18.4.
    assert value == pytest.approx(2 * (1 - PSI_FLOOR) * math.log(1 / PSI_FLOOR))


@pytest.mark.parametrize(("actual", "expected"), [([1], [1, 2]), ([-1, 2], [1, 2]), ([0, 0], [1, 2])])
def test_psi_refuses_bad_histograms(actual, expected):
    with pytest.raises(ValueError):
        psi(actual, expected)


def test_window_bins_like_numpy_and_forgets_the_oldest():
    window = DriftWindow(ReferenceHistogram(bin_edges=EDGES, counts=[1] * 10), size=3)
    assert window.psi() is None
    assert [window.bin_of(p) for p in (0.0, 0.0999, 0.1, 0.95, 1.0)] == [0, 0, 1, 9, 9]
    for p in (0.05, 0.15, 0.95, 0.96):
        window.add(p)
    assert window.samples == 3
    assert window.counts == [0, 1, 0, 0, 0, 0, 0, 0, 0, 2]
    assert window.psi() == pytest.approx(psi(window.counts, [1] * 10))


def test_window_refuses_a_malformed_reference():
    with pytest.raises(ValueError):
        DriftWindow(ReferenceHistogram(bin_edges=[0.0, 0.5], counts=[1, 1]), size=10)
