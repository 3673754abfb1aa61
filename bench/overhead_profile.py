"""Where the confidence overhead goes at 16 clients: the work taken apart and timed piece by piece.

One engine, one wave of `--clients` concurrent requests per measurement, every wave on
questions no other request asked (`QuestionPool`), each measurement repeated `--rounds`
times in alternation (mean and spread reported):

- `plain`: the answers alone (`engine.generate`: prompt prefill + decode);
- `reads_lora`: the confidence queries of those same answers alone, through the adapter
  (prefill of prompt + answer + query, one token sampled) - the cost the paper's method
  adds by construction, since the adapter's KV cache cannot reuse the base model's (an
  adapter that shares it, such as v8's last-layer LoRA, reads from the answers' cached
  prefix here, so the next difference is then the reuse's saving net of the LoRA);
- `reads_base`: the same queries through the base model after the prefix cache is reset,
  so `reads_lora - reads_base` is what the LoRA kernels cost;
- `engine_both`: each client generates then reads, straight on the engine (no service code);
- `service`: `ConfidenceService.generate` with method "adapter", as /generate runs it minus HTTP.

Then: scheduling interference = engine_both - plain - reads_lora (negative: the reads
overlapped the decodes), Python in the service = service - engine_both.

    python -m bench.overhead_profile            # full: 16 clients, 64 tokens, 3 rounds
    python -m bench.overhead_profile --quick    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Awaitable
from typing import Any

from bench.common import QuestionPool, Script, in_process_service, settings_for, table

NAME = "overhead_profile"
STEPS = ("plain", "reads_lora", "reads_base", "engine_both", "service")


async def wave(calls: list[Awaitable[Any]]) -> tuple[float, list[Any]]:
    """Run the calls together (one batch in the engine); wall seconds and results."""
    started = time.perf_counter()
    results = await asyncio.gather(*calls)
    return time.perf_counter() - started, list(results)


async def one_round(service: Any, pool: QuestionPool, clients: int, max_tokens: int) -> dict[str, Any]:
    from service.api.protocol import GenerateRequest, Method
    from service.engine.base import SamplingOptions

    engine, options = service.engine, SamplingOptions(max_tokens=max_tokens)
    with service.reader(Method.adapter, None) as reader:
        lora = reader.lora

        async def prompts(questions: list[str]) -> list[Any]:
            return [await service.chat_prompt([{"role": "user", "content": q}], param="q") for q in questions]

        first = await prompts(pool.take(clients))
        t_plain, results = await wave([engine.generate(p.ids, options) for p in first])
        queries = [
            await service.answer_query(p, r.completions[0]) for p, r in zip(first, results, strict=True)
        ]
        labels = [service.labels.no_id, service.labels.yes_id]
        t_lora, _ = await wave([engine.next_token_logprobs(q, labels, lora=lora) for q in queries])
        await engine.reset_prefix_cache()
        t_base, _ = await wave([engine.next_token_logprobs(q, labels) for q in queries])

        async def generate_then_read(p: Any) -> None:
            result = await engine.generate(p.ids, options)
            query = await service.answer_query(p, result.completions[0])
            await engine.next_token_logprobs(query, labels, lora=lora)

        second = await prompts(pool.take(clients))
        t_engine, _ = await wave([generate_then_read(p) for p in second])
        questions = pool.take(clients)
        t_service, _ = await wave(
            [
                service.generate(GenerateRequest(prompt=q, max_tokens=max_tokens, method=Method.adapter))
                for q in questions
            ]
        )
    prompt_tokens = statistics.fmean(len(p.ids) for p in first)
    answer_tokens = statistics.fmean(r.completions[0].completion_tokens for r in results)
    return {
        "seconds": dict(zip(STEPS, (t_plain, t_lora, t_base, t_engine, t_service), strict=True)),
        "tokens_per_request": {
            "prompt": prompt_tokens,
            "answer": answer_tokens,
            "query": statistics.fmean(len(q) for q in queries),
        },
    }


async def measure(args: argparse.Namespace, engine: Any = None) -> dict[str, Any]:
    settings = settings_for(args, default_max_tokens=args.max_tokens)
    pool = QuestionPool()
    rounds = []
    async with in_process_service(settings, engine) as (service, _):
        await one_round(service, pool, args.clients, args.max_tokens)  # warm every shape
        for _ in range(args.rounds):
            rounds.append(await one_round(service, pool, args.clients, args.max_tokens))
    mean = {s: statistics.fmean(r["seconds"][s] for r in rounds) for s in STEPS}
    spread = {s: (min(r["seconds"][s] for r in rounds), max(r["seconds"][s] for r in rounds)) for s in STEPS}
    breakdown = {
        "answers (prefill + decode)": mean["plain"],
        "confidence prefills, base weights": mean["reads_base"],
        "LoRA kernels in the confidence prefills": mean["reads_lora"] - mean["reads_base"],
        "scheduling interference": mean["engine_both"] - mean["plain"] - mean["reads_lora"],
        "Python in the service": mean["service"] - mean["engine_both"],
    }
    return {
        "clients": args.clients,
        "max_tokens": args.max_tokens,
        "rounds": rounds,
        "mean_s": mean,
        "spread_s": spread,
        "breakdown_s": breakdown,
        "limit_ratio": (mean["plain"] + mean["reads_lora"]) / mean["plain"],
        "service_ratio": mean["service"] / mean["plain"],
        "tokens_per_request": {
            k: statistics.fmean(r["tokens_per_request"][k] for r in rounds)
            for k in ("prompt", "answer", "query")
        },
    }


def report(result: dict[str, Any]) -> None:
    rows = [[s, result["mean_s"][s], *result["spread_s"][s]] for s in STEPS]
    table(f"One wave of {result['clients']} requests (seconds)", ["step", "mean s", "min s", "max s"], rows)
    total = result["mean_s"]["service"]
    rows = [[k, v, v / total] for k, v in result["breakdown_s"].items()]
    table(
        f"Breakdown: service {result['service_ratio']:.2f}x plain; answers + reads alone "
        f"{result['limit_ratio']:.2f}x (the limit with this method)",
        ["part", "seconds", "share of service"],
        rows,
    )


QUICK: dict[str, Any] = {"clients": 2, "max_tokens": 4, "rounds": 1}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3)


SCRIPT = Script(NAME, __doc__, options, QUICK, measure, report)
parse, main = SCRIPT.parse, SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())
