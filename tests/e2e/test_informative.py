"""The shipped default version's default method ranks right answers above wrong ones (issue 15).

The README's own examples, scored by the embedded model through `/score` as a client who names
no method gets them: the default adapter version (v9) carries a calibrated head, so the method
resolves to "calibrated_head".
"""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.conftest import SAME_READ_ABS

pytestmark = pytest.mark.e2e

DEFAULT_METHOD = "calibrated_head"  # what a request naming none gets from v9 (it has a head)

# Measured on v9 (CPU, 2026-12-03): Paris 0.580 > Berlin 0.483, Shakespeare 0.722 > Dickens
# 0.561, but 56 0.0087 < 54 0.0099 (v8 before it: 0.513 < 0.546; v9's bare-number level puts
# both near the model's 1 % arithmetic accuracy, the order stays wrong). The 56/54 miss is a finding
# (see the README), kept as a strict xfail: it is reported, and the day it passes the test
# says so. The base model itself prefers 54 as the reply (log-prob -6.67 vs -8.79,
# adapters.likelihood_ceiling).
MISSED_56 = pytest.mark.xfail(strict=True, reason="v9's head scores 54 above 56 (0.0099 vs 0.0087)")
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    pytest.param("What is 7 * 8?", "56", "54", marks=MISSED_56),
    ("Who wrote Hamlet?", "Shakespeare", "Dickens"),
]


@pytest.mark.parametrize(("question", "right", "wrong"), PAIRS, ids=["paris", "56", "shakespeare"])
def test_the_default_method_scores_the_right_answer_above_the_wrong_one(server, question, right, wrong):
    items = [{"question": question, "answer": right}, {"question": question, "answer": wrong}]
    response = httpx.post(f"{server}/score", json={"items": items}, timeout=120)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["method"] == DEFAULT_METHOD
    right_p, wrong_p = (item["confidence"] for item in body["items"])
    print(f"{question!r}: {right!r} {right_p:.3f} > {wrong!r} {wrong_p:.3f}")
    assert right_p > wrong_p


def test_generate_reads_the_default_method_from_the_sampled_answer(server):
    question = {"prompt": "What is the capital of France?", "max_tokens": 16}
    default = httpx.post(f"{server}/generate", json=question, timeout=120)
    named = httpx.post(f"{server}/generate", json={**question, "method": DEFAULT_METHOD}, timeout=120)
    assert default.status_code == named.status_code == 200, (default.text, named.text)
    assert default.json()["method"] == DEFAULT_METHOD
    assert 0.0 < default.json()["confidence"] < 1.0
    # Greedy, so the same answer: the default is that method, not another with its label.
    assert default.json()["text"] == named.json()["text"]
    assert default.json()["confidence"] == pytest.approx(named.json()["confidence"], abs=SAME_READ_ABS)
