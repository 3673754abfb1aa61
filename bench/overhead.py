"""Confidence overhead: /generate with the confidence read vs plain generation, same engine.

Both arms run in one process on one real VLLMEngine, on the same prompts and the same
greedy settings: "plain" is `engine.generate` on the rendered prompt (what the service
does before reading the confidence), "confidence" is `ConfidenceService.generate` with
method "adapter" (the answer plus the LoRA confidence query), "head" the same with method
"calibrated_head" (plus the sampled tokens' log-probs and the head's arithmetic; needs a
default adapter version with a head). HTTP is left out on purpose: it costs every arm the
same. Arms alternate (plain, confidence, head, head, confidence, plain) to cancel drift.
Goal: latency ratio <= 1.15; the head should cost no more than "confidence".

    python -m bench.overhead            # full: 64 requests per arm, 1 and 16 clients
    python -m bench.overhead --quick    # smoke run
"""

from __future__ import annotations

import argparse
from typing import Any

from bench.common import (
    QUESTIONS,
    Script,
    Timing,
    closed_loop,
    in_process_service,
    settings_for,
    table,
)

NAME = "overhead"


async def measure(args: argparse.Namespace, engine: Any = None) -> dict[str, Any]:
    from service.api.protocol import GenerateRequest, Method
    from service.calibration import query as cq
    from service.engine.base import SamplingOptions
    from service.errors import InvalidRequestError

    settings = settings_for(
        args, default_max_tokens=args.max_tokens, max_tokens_limit=max(args.max_tokens, 1024)
    )
    async with in_process_service(settings, engine) as (service, _):
        tokenizer = service.engine.tokenizer
        prompts = [
            cq.encode_rendered(tokenizer, cq.render(tokenizer, [{"role": "user", "content": q}]))
            for q in QUESTIONS
        ]
        options = SamplingOptions(max_tokens=args.max_tokens)

        async def plain(i: int) -> None:
            await service.engine.generate(prompts[i % len(prompts)], options)

        def with_method(method: Method) -> Any:
            async def arm(i: int) -> None:
                question = QUESTIONS[i % len(QUESTIONS)]
                await service.generate(
                    GenerateRequest(prompt=question, max_tokens=args.max_tokens, method=method)
                )

            return arm

        arms = {
            "plain": plain,
            "confidence": with_method(Method.adapter),
            "head": with_method(Method.calibrated_head),
        }
        try:
            await arms["head"](0)
        except InvalidRequestError:  # the default adapter version has no head: two arms only
            del arms["head"]
        rows: dict[str, dict[str, Any]] = {}
        for clients in args.clients:
            await closed_loop(plain, requests=clients, concurrency=clients)  # warm this batch size
            runs: dict[str, list[Timing]] = {arm: [] for arm in arms}
            order = ("plain", "confidence", "head", "head", "confidence", "plain")
            for arm in (a for a in order if a in arms):
                runs[arm].append(
                    await closed_loop(arms[arm], requests=args.requests // 2, concurrency=clients)
                )
            summary: dict[str, Any] = {arm: merge(timings).summary() for arm, timings in runs.items()}
            summary["latency_ratio"] = summary["confidence"]["mean_s"] / summary["plain"]["mean_s"]
            summary["p50_ratio"] = summary["confidence"]["p50_s"] / summary["plain"]["p50_s"]
            summary["throughput_ratio"] = (
                summary["plain"]["throughput_rps"] / summary["confidence"]["throughput_rps"]
            )
            if "head" in summary:
                summary["head_latency_ratio"] = summary["head"]["mean_s"] / summary["plain"]["mean_s"]
                summary["head_vs_adapter_ratio"] = summary["head"]["mean_s"] / summary["confidence"]["mean_s"]
            rows[str(clients)] = summary
    return {
        "max_tokens": args.max_tokens,
        "requests_per_arm": args.requests,
        "goal_ratio": 1.15,
        "clients": rows,
    }


def merge(timings: list[Timing]) -> Timing:
    return Timing([x for t in timings for x in t.latencies], sum(t.wall_s for t in timings))


def report(result: dict[str, Any]) -> None:
    rows = []
    for clients, s in result["clients"].items():
        for arm in (a for a in ("plain", "confidence", "head") if a in s):
            rows.append(
                [clients, arm, s[arm]["mean_s"], s[arm]["p50_s"], s[arm]["p99_s"], s[arm]["throughput_rps"]]
            )
        rows.append(
            [clients, "ratio (conf/plain)", s["latency_ratio"], s["p50_ratio"], None, s["throughput_ratio"]]
        )
        if "head" in s:
            rows.append([clients, "ratio (head/plain)", s["head_latency_ratio"], None, None, None])
            rows.append([clients, "ratio (head/conf)", s["head_vs_adapter_ratio"], None, None, None])
    table(
        "Confidence overhead (goal: ratio <= 1.15)",
        ["clients", "arm", "mean s", "p50 s", "p99 s", "req/s"],
        rows,
    )


QUICK: dict[str, Any] = {"requests": 4, "clients": [1, 4], "max_tokens": 8}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=64, help="requests per arm and client count")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    p.add_argument("--max-tokens", type=int, default=64)


SCRIPT = Script(NAME, __doc__, options, QUICK, measure, report)
parse, main = SCRIPT.parse, SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())
