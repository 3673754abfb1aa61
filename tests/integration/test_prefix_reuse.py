"""The confidence query extends the generation's own token ids, so vLLM's prefix cache
serves prompt + answer to a read under the same weights (real engine, tiny model)."""

from __future__ import annotations

import pytest

from service.calibration import query as cq
from service.engine.base import PrefixCacheStats, SamplingOptions
from service.serving.core import ConfidenceService, Limits, Prompt

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

# Long enough that prompt + answer fill at least one KV block (32 tokens on CPU).
QUESTION = "Describe, in a few words, the colour of the sky on a clear summer afternoon in Lisbon."


def core(engine) -> ConfidenceService:
    limits = Limits(
        max_model_len=engine.max_model_len,
        default_max_tokens=16,
        max_tokens_limit=64,
        max_score_items=4,
        query_reserve_tokens=64,
    )
    return ConfidenceService(engine, registry=None, labels=cq.label_tokens(engine.tokenizer), limits=limits)  # type: ignore[arg-type]


async def generated(service: ConfidenceService, question: str) -> tuple[Prompt, object]:
    prompt = await service.chat_prompt([{"role": "user", "content": question}], param="prompt")
    result = await service.engine.generate(prompt.ids, SamplingOptions(max_tokens=16))
    return prompt, result.completions[0]


async def test_query_ids_extend_the_generation_and_match_the_text_query(engine):
    service = core(engine)
    prompt, completion = await generated(service, QUESTION)
    spliced = await service.answer_query(prompt, completion)
    assert spliced[: len(prompt.ids)] == prompt.ids
    answer_ids = [t for t in completion.token_ids if t not in engine.tokenizer.all_special_ids]
    assert spliced[len(prompt.ids) : len(prompt.ids) + len(answer_ids)] == answer_ids
    # The text route renders the same query whenever the sampled ids are the canonical split.
    if engine.tokenizer.encode(completion.text, add_special_tokens=False) == answer_ids:
        assert spliced == cq.query_ids(engine.tokenizer, prompt.question, completion.text)


async def test_a_base_read_after_generation_hits_the_prefix_cache(engine):
    service = core(engine)
    prompt, completion = await generated(service, QUESTION + " Answer briefly.")
    query = await service.answer_query(prompt, completion)
    engine.prefix_cache["read"] = PrefixCacheStats()
    await service.engine.next_token_logprobs(query, [service.labels.no_id, service.labels.yes_id])
    stats = engine.prefix_cache["read"]
    reused = len(prompt.ids) + completion.completion_tokens - 1  # tokens the generation's KV holds
    assert stats.prompt_tokens == len(query)
    assert stats.cached_tokens >= (reused // 32) * 32 > 0, stats


async def test_a_query_that_leaves_out_the_system_turn_is_tokenized_from_text(engine):
    service = core(engine)
    chat = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": QUESTION}]
    prompt = await service.chat_prompt(chat, param="messages")
    completion = (await service.engine.generate(prompt.ids, SamplingOptions(max_tokens=8))).completions[0]
    query = await service.answer_query(prompt, completion)
    assert query == cq.query_ids(engine.tokenizer, chat, completion.text)
    assert query[: len(prompt.ids)] != prompt.ids
