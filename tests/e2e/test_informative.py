"""The shipped default version's calibrated head ranks right answers above wrong ones (issue 15).

The README's own examples, scored by the embedded model through `/score` with
method "calibrated_head" of the default adapter version (v7).
"""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.e2e

# Measured on v7 (CPU, 2026-12-02): Paris 0.475 > Berlin 0.382, Shakespeare 0.599 > Dickens
# 0.442, but 56 0.535 < 54 0.570. The 56/54 miss is a finding (see the README), kept as a
# strict xfail: it is reported, and the day it passes the test says so.
MISSED_56 = pytest.mark.xfail(strict=True, reason="v7's head scores 54 above 56 (0.570 vs 0.535)")
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    pytest.param("What is 7 * 8?", "56", "54", marks=MISSED_56),
    ("Who wrote Hamlet?", "Shakespeare", "Dickens"),
]


@pytest.mark.parametrize(("question", "right", "wrong"), PAIRS, ids=["paris", "56", "shakespeare"])
def test_calibrated_head_scores_the_right_answer_above_the_wrong_one(server, question, right, wrong):
    items = [{"question": question, "answer": right}, {"question": question, "answer": wrong}]
    response = httpx.post(f"{server}/score", json={"items": items, "method": "calibrated_head"}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "calibrated_head"
    right_p, wrong_p = (item["confidence"] for item in body["items"])
    print(f"{question!r}: {right!r} {right_p:.3f} > {wrong!r} {wrong_p:.3f}")
    assert right_p > wrong_p


def test_generate_reads_the_head_from_the_sampled_answer(server):
    response = httpx.post(
        f"{server}/generate",
        json={"prompt": "What is the capital of France?", "method": "calibrated_head"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == "calibrated_head"
    assert 0.0 < body["confidence"] < 1.0
