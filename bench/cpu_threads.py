"""CPU thread binding: vLLM's "auto" (one core reserved for the front end) vs every core
for the model (the service's default on hosts with up to 4 CPUs, `service/engine/cpu.py`).

For each setting the real app is served over loopback HTTP with its own engine, and three
things are measured one after the other:
- throughput: /score items/s with 8 closed-loop clients x 16 items for `--seconds`;
- small requests on an idle server: /score with one item, one client (p50/p99);
- the front end under load: /health polled every 50 ms while the throughput run goes
  (p50/p99), which is what a liveness probe sees when the model's threads hold every core.
On CPU only (elsewhere the setting does not exist).

    python -m bench.cpu_threads            # full: ~5 min on an idle 2-core CPU
    python -m bench.cpu_threads --quick    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bench.common import GRADED, Script, closed_loop, http_server, percentile, settings_for, table

NAME = "cpu_threads"
SETTINGS = {
    "vllm_auto": {"VLLM_CPU_OMP_THREADS_BIND": "auto"},
    "all_cores": {},  # the service's own default (service.engine.cpu.thread_defaults)
}


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """Set `values` (and clear the other binding variables) for an engine started inside."""
    names = ("VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU")
    saved = {n: os.environ.get(n) for n in names}
    for n in names:
        os.environ.pop(n, None)
    os.environ.update(values)
    try:
        yield
    finally:
        for n, v in saved.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def pool(n: int) -> list[dict[str, str]]:
    from adapters.data import read_graded_jsonl

    return [{"question": r.question, "answer": r.answer} for r in read_graded_jsonl(GRADED, split="test")[:n]]


async def run_setting(args: argparse.Namespace, items: list[dict[str, str]]) -> dict[str, Any]:
    import httpx

    settings = settings_for(args, max_score_items=16, max_inflight_sequences=512)
    async with http_server(settings) as url, httpx.AsyncClient(base_url=url, timeout=600) as client:

        async def score(i: int, batch: int) -> None:
            chunk = [items[(i * batch + j) % len(items)] for j in range(batch)]
            (await client.post("/score", json={"items": chunk})).raise_for_status()

        single = await closed_loop(lambda i: score(i, 1), requests=args.single, concurrency=1)
        await closed_loop(lambda i: score(i, 16), requests=8, concurrency=8)  # warm the batch shape
        health: list[float] = []
        done = asyncio.Event()

        async def probe() -> None:
            async with httpx.AsyncClient(base_url=url, timeout=60) as prober:
                while not done.is_set():
                    started = time.perf_counter()
                    (await prober.get("/health")).raise_for_status()
                    health.append(time.perf_counter() - started)
                    await asyncio.sleep(0.05)

        prober = asyncio.create_task(probe())
        loaded = await closed_loop(lambda i: score(i, 16), seconds=args.seconds, concurrency=8)
        done.set()
        await prober
    return {
        "score_items_per_s": loaded.summary()["throughput_rps"] * 16,
        "score_16_items_8_clients": loaded.summary(),
        "single_item_idle": single.summary(),
        "health_under_load": {
            "probes": len(health),
            "p50_s": percentile(health, 50),
            "p99_s": percentile(health, 99),
        },
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    items = pool(256)
    results: dict[str, Any] = {}
    for name in args.settings:
        with environment(SETTINGS[name]):
            results[name] = await run_setting(args, items)
    return {"settings": results, "seconds": args.seconds}


def report(result: dict[str, Any]) -> None:
    rows = [
        [
            name,
            r["score_items_per_s"],
            r["single_item_idle"]["p50_s"],
            r["single_item_idle"]["p99_s"],
            r["health_under_load"]["p50_s"],
            r["health_under_load"]["p99_s"],
        ]
        for name, r in result["settings"].items()
    ]
    table(
        "CPU thread binding",
        [
            "setting",
            "/score items/s (8x16)",
            "1-item p50 s",
            "1-item p99 s",
            "/health p50 s",
            "/health p99 s",
        ],
        rows,
    )


QUICK: dict[str, Any] = {"seconds": 3.0, "single": 3}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seconds", type=float, default=60.0, help="length of the loaded run per setting")
    p.add_argument("--single", type=int, default=30, help="single-item requests on the idle server")
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))


SCRIPT = Script(NAME, __doc__, options, QUICK, measure, report)
parse, main = SCRIPT.parse, SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())
