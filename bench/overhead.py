"""Confidence overhead: /generate with the confidence read vs plain generation, same engine.

Both arms run in one process on one real VLLMEngine, on the same prompts and the same
greedy settings: "plain" is `engine.generate` on the rendered prompt (what the service
does before reading the confidence), "confidence" is `ConfidenceService.generate` with
method "adapter" (the answer plus the LoRA confidence query), "head" the same with method
"calibrated_head" (plus the sampled tokens' log-probs and the head's arithmetic; needs a
default adapter version with a head), "zero_shot" the query read by the base model (its
ids extend the generation's, so vLLM's prefix cache holds prompt + answer), and "cached"
method "adapter" with `answer_with_adapter` (the answer generated through the adapter, so
the adapter's read finds prompt + answer cached: the limit of the query's own prefill).
With `--second-adapter DIR`, arm "second" is method "adapter" through that version, loaded
beside the default in the same engine and timed in the same palindrome: two adapters'
overheads compared side by side in one run (e.g. a KV-sharing adapter against the default).
HTTP is left out on purpose: it costs every arm the same. Arms run in a palindrome
(plain, confidence, ..., confidence, plain) to cancel drift. Each arm reports the prefix
cache hit rate of its engine requests. Goal: latency ratio <= 1.15; the head should cost
no more than "confidence".

    python -m bench.overhead            # full: 64 requests per arm, 1 and 16 clients
    python -m bench.overhead --quick    # smoke run
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any

from bench.common import (
    QuestionPool,
    Script,
    Timing,
    closed_loop,
    in_process_service,
    settings_for,
    table,
)

NAME = "overhead"


async def measure(args: argparse.Namespace, engine: Any = None, **overrides: Any) -> dict[str, Any]:
    """Every arm in `args.arms` (plain and confidence always) per client count; `overrides`
    go to the service's settings (bench.prefill_budget varies the engine's step budget)."""
    from service.api.protocol import GenerateRequest, Method
    from service.calibration import query as cq
    from service.engine.base import PrefixCacheStats, SamplingOptions
    from service.errors import InvalidRequestError

    first = second = ""  # the default's and the second adapter's specs, with --second-adapter
    if getattr(args, "second_adapter", None) is not None:  # bench.prefill_budget's args have none
        overrides["adapter_root"], first, second = both_adapters(args.adapter, args.second_adapter)
    settings = settings_for(
        args, default_max_tokens=args.max_tokens, max_tokens_limit=max(args.max_tokens, 1024), **overrides
    )
    pool = QuestionPool()
    # Each run of an arm asks questions no other request asked (see QuestionPool).
    current: list[str] = pool.take(max(args.clients))
    async with in_process_service(settings, engine) as (service, ops):
        if second:
            # Two versions of one name: start-up staged only the newer, and made it current.
            for spec in (first, second):
                if not any(a.spec == spec for a in service.registry.list()):
                    await ops.load(*spec.split("@"))
            await ops.set_default(first)
        tokenizer = service.engine.tokenizer
        options = SamplingOptions(max_tokens=args.max_tokens)

        async def plain(i: int) -> None:
            chat = [{"role": "user", "content": current[i]}]
            await service.engine.generate(cq.encode_rendered(tokenizer, cq.render(tokenizer, chat)), options)

        def with_method(method: Method, answer_with_adapter: bool = False, adapter: str | None = None) -> Any:
            async def arm(i: int) -> None:
                question = current[i]
                await service.generate(
                    GenerateRequest(
                        prompt=question,
                        max_tokens=args.max_tokens,
                        method=method,
                        answer_with_adapter=answer_with_adapter,
                        adapter=adapter,
                    )
                )

            return arm

        arms = {
            "plain": plain,
            "confidence": with_method(Method.adapter),
            "second": with_method(Method.adapter, adapter=second or None),
            "head": with_method(Method.calibrated_head),
            "zero_shot": with_method(Method.zero_shot),
            "cached": with_method(Method.adapter, answer_with_adapter=True),
        }
        wanted = {"plain", "confidence", *args.arms, *(["second"] if second else [])}
        arms = {name: arm for name, arm in arms.items() if name in wanted}
        try:
            if "head" in arms:
                await arms["head"](0)
        except InvalidRequestError:  # the default adapter version has no head: no head arm
            del arms["head"]
        rows: dict[str, dict[str, Any]] = {}
        for clients in args.clients:
            current[:] = pool.take(clients)
            await closed_loop(plain, requests=clients, concurrency=clients)  # warm this batch size
            runs: dict[str, list[Timing]] = {arm: [] for arm in arms}
            cache: dict[str, dict[str, PrefixCacheStats]] = {arm: {} for arm in arms}
            order = [*ARMS, *reversed(ARMS)]
            for arm in (a for a in order if a in arms):
                current[:] = pool.take(args.requests // 2)
                prefix_cache = getattr(service.engine, "prefix_cache", None)
                if prefix_cache is not None:
                    prefix_cache.clear()
                runs[arm].append(
                    await closed_loop(arms[arm], requests=args.requests // 2, concurrency=clients)
                )
                for kind, stats in (prefix_cache or {}).items():
                    seen = cache[arm].setdefault(kind, PrefixCacheStats())
                    seen.prompt_tokens += stats.prompt_tokens
                    seen.cached_tokens += stats.cached_tokens
            summary: dict[str, Any] = {arm: Timing.merged(timings).summary() for arm, timings in runs.items()}
            for arm, kinds in cache.items():
                summary[arm]["prefix_cache_hit_rate"] = {k: stats.hit_rate for k, stats in kinds.items()}
            summary["latency_ratio"] = summary["confidence"]["mean_s"] / summary["plain"]["mean_s"]
            summary["p50_ratio"] = summary["confidence"]["p50_s"] / summary["plain"]["p50_s"]
            summary["throughput_ratio"] = (
                summary["plain"]["throughput_rps"] / summary["confidence"]["throughput_rps"]
            )
            for arm in ("second", "zero_shot", "cached"):
                if arm in summary:
                    summary[f"{arm}_latency_ratio"] = summary[arm]["mean_s"] / summary["plain"]["mean_s"]
            if "second" in summary:
                second_s, adapter_s = summary["second"]["mean_s"], summary["confidence"]["mean_s"]
                summary["second_vs_adapter_ratio"] = second_s / adapter_s
            if "head" in summary:
                summary["head_latency_ratio"] = summary["head"]["mean_s"] / summary["plain"]["mean_s"]
                summary["head_vs_adapter_ratio"] = summary["head"]["mean_s"] / summary["confidence"]["mean_s"]
            rows[str(clients)] = summary
        budget = getattr(service.engine, "step_token_budget", None)
        default = service.registry.default_adapter()
    return {
        "default_adapter": default.spec if default is not None else None,
        "second_adapter": second or None,
        "step_token_budget": budget,
        "max_tokens": args.max_tokens,
        "requests_per_arm": args.requests,
        "goal_ratio": 1.15,
        "clients": rows,
    }


ARMS = ("plain", "confidence", "second", "head", "zero_shot", "cached")
CHOOSABLE_ARMS = tuple(a for a in ARMS if a != "second")  # "second" runs with --second-adapter


def both_adapters(default: Path, second: Path) -> tuple[Path, str, str]:
    """A scratch adapter root holding copies of both `<name>/<version>` directories (the
    registry refuses symbolic links), and the specs of the default and the second one."""
    default, second = default.resolve(), second.resolve()
    if (default.parent.name, default.name) == (second.parent.name, second.name):
        raise SystemExit(f"--second-adapter {second}: the same name and version as --adapter")
    root = Path(tempfile.mkdtemp(prefix="bench-adapters-"))
    for version_dir in (default, second):
        shutil.copytree(version_dir, root / version_dir.parent.name / version_dir.name)
    return root, f"{default.parent.name}@{default.name}", f"{second.parent.name}@{second.name}"


def report(result: dict[str, Any]) -> None:
    rows = []
    for clients, s in result["clients"].items():
        for arm in (a for a in ARMS if a in s):
            hits = s[arm].get("prefix_cache_hit_rate", {})
            rows.append(
                [
                    clients,
                    arm,
                    s[arm]["mean_s"],
                    s[arm]["p50_s"],
                    s[arm]["p99_s"],
                    s[arm]["throughput_rps"],
                    ", ".join(f"{k} {v:.0%}" for k, v in sorted(hits.items())) or None,
                ]
            )
        rows.append(
            [
                clients,
                "ratio (conf/plain)",
                s["latency_ratio"],
                s["p50_ratio"],
                None,
                s["throughput_ratio"],
                None,
            ]
        )
        for arm in ("second", "zero_shot", "cached"):
            if f"{arm}_latency_ratio" in s:
                rows.append(
                    [clients, f"ratio ({arm}/plain)", s[f"{arm}_latency_ratio"], None, None, None, None]
                )
        if "head" in s:
            rows.append([clients, "ratio (head/plain)", s["head_latency_ratio"], None, None, None, None])
            rows.append([clients, "ratio (head/conf)", s["head_vs_adapter_ratio"], None, None, None, None])
    table(
        "Confidence overhead (goal: ratio <= 1.15)",
        ["clients", "arm", "mean s", "p50 s", "p99 s", "req/s", "prefix cache hits"],
        rows,
    )


QUICK: dict[str, Any] = {"requests": 4, "clients": [1, 4], "max_tokens": 8}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=64, help="requests per arm and client count")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument(
        "--arms",
        nargs="+",
        default=list(CHOOSABLE_ARMS),
        choices=CHOOSABLE_ARMS,
        help="plain and confidence always run",
    )
    p.add_argument(
        "--second-adapter",
        type=Path,
        default=None,
        help="another adapter version (<root>/<name>/<version>) timed as arm 'second' in the same run",
    )


SCRIPT = Script(NAME, __doc__, options, QUICK, measure, report)
parse, main = SCRIPT.parse, SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())
