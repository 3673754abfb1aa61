"""Stratified AUROC: a score that only knows the source earns nothing."""

import numpy as np
import pytest

from adapters.stratified import paired_stratified_auroc_diff, stratified_auroc


def test_a_per_source_base_rate_scores_high_pooled_but_one_half_within_sources():
    from service.calibration.metrics import auroc

    y = np.array([1, 1, 1, 0] * 5 + [0, 0, 0, 1] * 5, dtype=float)
    strata = ["easy"] * 20 + ["hard"] * 20
    rate = np.array([0.75] * 20 + [0.25] * 20)
    assert auroc(rate, y) > 0.7
    assert stratified_auroc(rate, y, strata) == pytest.approx(0.5)


def test_the_paired_difference_finds_a_real_within_source_gain():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400).astype(float)
    strata = ["a" if i % 2 else "b" for i in range(400)]
    good = y + rng.normal(0, 0.8, 400)
    noise = rng.normal(0, 1, 400)
    out = paired_stratified_auroc_diff(good, noise, y, strata, n=200, seed=0)
    assert out["ci_low"] > 0.1
    assert out["estimate"] == pytest.approx(
        stratified_auroc(good, y, strata) - stratified_auroc(noise, y, strata)
    )
