"""The confidence query extends the generation's own token ids, so vLLM's prefix cache
serves prompt + answer to a read under the same weights, and to a read through an adapter
that only adapts the last layer's MLP (real engine, tiny model)."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.calibration import query as cq
from service.engine.base import LoRA, PrefixCacheStats, SamplingOptions
from service.serving.core import ConfidenceService, Limits, Prompt
from tests.integration.conftest import make_random_lora

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


MLP = ("gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def last_layer_adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoRA]:
    """Random LoRAs on the tiny model's last layer (of 2): MLP only, and attention q/v."""
    root = tmp_path_factory.mktemp("last_layer")
    make_random_lora(tiny_model, root / "mlp", seed=5, target_modules=MLP, layers=[1])
    make_random_lora(tiny_model, root / "attn", seed=6, layers=[1])
    return {"mlp": LoRA("last-mlp", 11, root / "mlp"), "attn": LoRA("last-attn", 12, root / "attn")}


async def read_after_generation(
    engine, lora: LoRA, question: str
) -> tuple[list[int], list[float], PrefixCacheStats, int]:
    service = core(engine)
    prompt, completion = await generated(service, question)
    query = await service.answer_query(prompt, completion)
    engine.prefix_cache["read"] = PrefixCacheStats()
    labels = [service.labels.no_id, service.labels.yes_id]
    logprobs = await engine.next_token_logprobs(query, labels, lora=lora)
    reused = len(prompt.ids) + completion.completion_tokens - 1  # tokens the generation's KV holds
    return query, logprobs, engine.prefix_cache["read"], reused


async def test_a_last_layer_mlp_adapter_reads_from_the_base_cache_and_the_same(engine, last_layer_adapters):
    lora = last_layer_adapters["mlp"]
    await engine.add_lora(lora)
    try:
        query, cached, stats, reused = await read_after_generation(engine, lora, QUESTION + " Use one word.")
        assert stats.cached_tokens >= (reused // 32) * 32 > 0, stats
        labels = [cq.label_tokens(engine.tokenizer).no_id, cq.label_tokens(engine.tokenizer).yes_id]
        assert await engine.reset_prefix_cache()
        fresh = await engine.next_token_logprobs(query, labels, lora=lora)
        base = await engine.next_token_logprobs(query, labels)
    finally:
        await engine.remove_lora(lora)
    # The cached read equals a full prefill through the adapter, and the adapter does move
    # the read (else the equality would say nothing).
    assert cached == pytest.approx(fresh, abs=1e-3)
    assert max(abs(a - b) for a, b in zip(fresh, base, strict=True)) > 1e-2


async def test_an_adapter_on_attention_keeps_its_own_cache(engine, last_layer_adapters):
    lora = last_layer_adapters["attn"]
    await engine.add_lora(lora)
    try:
        _, _, stats, reused = await read_after_generation(engine, lora, QUESTION + " Name a colour.")
    finally:
        await engine.remove_lora(lora)
    assert reused >= 32
    assert stats.cached_tokens == 0, stats


async def scored_by_head(engine, lora: LoRA, answer: str) -> PrefixCacheStats:
    """/score's read of one answer by the calibrated head (adapter query + base likelihood)."""
    from service.calibration.estimator import HeadParams
    from service.serving.core import ConfidenceReader, Scored
    from tests.unit.test_calibrated_head import HEAD

    service = core(engine)
    question = [{"role": "user", "content": QUESTION + " Answer in a sentence."}]
    reader = ConfidenceReader("calibrated_head", lora, 1.0, None, head=HeadParams(**HEAD))
    engine.prefix_cache["read"] = PrefixCacheStats()
    query = cq.query_ids(engine.tokenizer, question, answer)
    confidence = await service.read_answer(query, reader, Scored(question, answer, None))
    assert 0.0 < confidence < 1.0
    return engine.prefix_cache["read"]


async def test_the_head_reads_a_kv_sharing_adapter_after_the_base_prefill(engine, last_layer_adapters):
    answer = "It is a clear, deep blue, a little paler near the horizon over the river."
    shared, own = last_layer_adapters["mlp"], last_layer_adapters["attn"]
    assert engine.shares_base_kv(shared) and not engine.shares_base_kv(own)
    for lora in (shared, own):
        await engine.add_lora(lora)
    try:
        assert await engine.reset_prefix_cache()
        stats = await scored_by_head(engine, shared, answer)
        assert await engine.reset_prefix_cache()
        # Batched together, the adapter's query finds nothing the base prefill computed.
        unshared = await scored_by_head(engine, own, answer)
    finally:
        for lora in (shared, own):
            await engine.remove_lora(lora)
    assert stats.cached_tokens >= 32, stats
    assert unshared.cached_tokens == 0, unshared
