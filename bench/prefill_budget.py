"""The engine's step budget (vLLM max_num_batched_tokens) against the confidence overhead.

vLLM schedules running decodes first in every step and fills the rest of its token budget with
prefill chunks, so the budget decides how much of the confidence reads' prefill joins a step
that 16 decodes are waiting on: a small budget keeps decode steps short and spreads the reads
over more steps; a large one finishes the reads in fewer, longer steps. Each budget gets its
own engine and runs bench.overhead's plain / adapter / calibrated_head arms (palindrome order,
questions no other request asked), so every row is a side-by-side ratio measured in one run.
The service sets nothing by default (vLLM's 2048 on CPU); `CONFIDENCE_MAX_NUM_BATCHED_TOKENS`
changes it.

    python -m bench.prefill_budget            # full: budgets 256-8192, 16 clients, ~10 min on CPU
    python -m bench.prefill_budget --quick    # smoke run
"""

from __future__ import annotations

import argparse
from typing import Any

from bench import overhead
from bench.common import Script, table

NAME = "prefill_budget"


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    budgets: dict[str, Any] = {}
    for budget in args.budgets:
        result = await overhead.measure(args, max_num_batched_tokens=budget)
        resolved = result["step_token_budget"]
        if resolved not in (None, budget):  # None: an engine without the setting
            raise RuntimeError(f"asked for a step budget of {budget}, vLLM runs {resolved}")
        budgets[str(budget)] = result["clients"]
    return {"max_tokens": args.max_tokens, "requests_per_arm": args.requests, "budgets": budgets}


def rows(result: dict[str, Any]) -> list[list[Any]]:
    out = []
    for budget, by_clients in result["budgets"].items():
        for clients, s in by_clients.items():
            head = s.get("head_latency_ratio")
            out.append(
                [
                    budget,
                    clients,
                    s["plain"]["mean_s"],
                    s["confidence"]["mean_s"],
                    s["latency_ratio"],
                    head,
                    s["plain"]["throughput_rps"],
                    s["confidence"]["throughput_rps"],
                ]
            )
    return out


COLUMNS = [
    "budget (tokens/step)",
    "clients",
    "plain mean s",
    "adapter mean s",
    "adapter/plain",
    "head/plain",
    "plain req/s",
    "adapter req/s",
]


def report(result: dict[str, Any]) -> None:
    table("Step budget vs confidence overhead", COLUMNS, rows(result))


QUICK: dict[str, Any] = {"requests": 4, "clients": [2], "max_tokens": 8, "budgets": [128, 2048]}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 2048, 8192])
    p.add_argument("--requests", type=int, default=32, help="requests per arm and budget")
    p.add_argument("--clients", type=int, nargs="+", default=[16])
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument(
        "--arms",
        nargs="+",
        default=["plain", "confidence", "head"],
        choices=overhead.CHOOSABLE_ARMS,
        help="bench.overhead's arms to run (plain and confidence always)",
    )


SCRIPT = Script(NAME, __doc__, options, QUICK, measure, report)
parse, main = SCRIPT.parse, SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())
