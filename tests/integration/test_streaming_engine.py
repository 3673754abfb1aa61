"""VLLMEngine.generate_stream on real vLLM (tiny model): the same text as generate, choices
interleaved, logprobs, and an early close that really aborts the vLLM request."""

from __future__ import annotations

from contextlib import aclosing

import pytest

from service.engine.base import SamplingOptions

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

PROMPT = [1, 450, 4996, 310, 3444, 338]  # any ids: the tiny model's vocabulary is random


async def collect(engine, options):
    texts: dict[int, str] = {}
    finishes: dict[int, str] = {}
    tokens: dict[int, int] = {}
    async for delta in engine.generate_stream(PROMPT, options):
        assert delta.index not in finishes, "text after the choice finished"
        texts[delta.index] = texts.get(delta.index, "") + delta.text
        tokens[delta.index] = tokens.get(delta.index, 0) + delta.tokens
        if delta.finish_reason is not None:
            finishes[delta.index] = delta.finish_reason
    return texts, finishes, tokens


async def test_streamed_text_is_the_generated_text(engine):
    options = SamplingOptions(max_tokens=12, temperature=0.0, logprobs=2)
    whole = (await engine.generate(PROMPT, options)).completions[0]
    texts, finishes, tokens = await collect(engine, options)
    assert texts == {0: whole.text} and finishes == {0: whole.finish_reason}
    assert tokens == {0: whole.completion_tokens}
    assert whole.logprobs is not None and len(whole.logprobs) == whole.completion_tokens
    assert all(len(t.top) == 2 for t in whole.logprobs)


async def test_each_of_n_choices_streams_and_finishes_once(engine):
    _, finishes, tokens = await collect(engine, SamplingOptions(max_tokens=6, temperature=1.0, n=2))
    assert set(finishes) == {0, 1} and all(tokens[i] >= 1 for i in (0, 1))


async def test_closing_the_stream_early_aborts_the_vllm_request(engine):
    processor = engine.llm.output_processor
    before = processor.get_num_unfinished_requests()
    stream = engine.generate_stream(PROMPT, SamplingOptions(max_tokens=400, temperature=0.0))
    async with aclosing(stream):
        async for _ in stream:
            assert processor.get_num_unfinished_requests() == before + 1
            break
    assert processor.get_num_unfinished_requests() == before


async def test_generate_returns_every_one_of_n_choices_when_they_end_at_different_steps(engine):
    # A stop string on a common letter ends the sampled choices at different steps: vLLM's
    # default (cumulative) outputs then carry only the child that just ended, one choice of n.
    options = SamplingOptions(max_tokens=32, temperature=1.0, n=4, stop=("e",))
    for _ in range(3):
        result = await engine.generate(PROMPT, options)
        assert len(result.completions) == options.n, result
        assert all(c.finish_reason in ("stop", "length") for c in result.completions), result
