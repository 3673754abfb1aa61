"""Load test: many concurrent clients on loopback for a fixed time; no 5xx, no hangs.

Each of N clients loops until the time is up, alternating /generate and /score (1-3
items), and records every outcome. Overload is allowed to shed load with 429 +
Retry-After (counted, not a failure); a 5xx, a transport error or a request still
unanswered after the client timeout (a hang) fails the run (exit code 1). Reports p50/p99
latency and throughput. Traffic goes to loopback only; the run stops by itself.

    python -m bench.load_test                                   # serve the model here: 200 clients, 60 s
    python -m bench.load_test --url http://127.0.0.1:8000       # against a running server
    python -m bench.load_test --quick                           # smoke run: 20 clients, 5 s
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import Counter
from typing import Any

from bench.common import QUESTIONS, http_server, parser, percentile, publish, settings_for, table

NAME = "load_test"
ANSWERS = ["Paris.", "56", "I am not sure, maybe 12.", "The Pacific Ocean"]


async def run_load(
    url: str, *, clients: int, duration_s: float, client_timeout_s: float, max_tokens: int
) -> dict[str, Any]:
    """Drive `clients` closed-loop clients against `url` for `duration_s`; returns the tally."""
    import httpx

    statuses: Counter[str] = Counter()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    deadline = time.monotonic() + duration_s
    # Idle connections are dropped before uvicorn's 5 s keep-alive timeout: a client that
    # reuses a connection the server is closing at that moment gets a ReadError (the
    # well-known keep-alive race), which would be charged to the server.
    limits = httpx.Limits(
        max_connections=clients + 8, max_keepalive_connections=clients + 8, keepalive_expiry=3.0
    )

    async def client_loop(client: httpx.AsyncClient, n: int) -> None:
        i = n
        while time.monotonic() < deadline:
            q = QUESTIONS[i % len(QUESTIONS)]
            started = time.monotonic()
            try:
                if i % 2:
                    items = [
                        {"question": q, "answer": ANSWERS[(i + j) % len(ANSWERS)]} for j in range(1 + i % 3)
                    ]
                    response = await client.post("/score", json={"items": items})
                else:
                    response = await client.post("/generate", json={"prompt": q, "max_tokens": max_tokens})
            except httpx.TimeoutException:
                errors["hang (client timeout)"] += 1
            except httpx.TransportError as exc:
                errors[
                    f"transport: {type(exc).__name__}: {exc} after {time.monotonic() - started:.1f} s"
                ] += 1
            else:
                statuses[str(response.status_code)] += 1
                latencies.append(time.monotonic() - started)
                if response.status_code == 429:  # shed load: back off as told
                    await asyncio.sleep(min(float(response.headers.get("retry-after", 1)), 2.0))
            i += 1

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=client_timeout_s, limits=limits) as client:
        await asyncio.gather(*(client_loop(client, n) for n in range(clients)))
    wall = time.monotonic() - started
    five_xx = sum(n for code, n in statuses.items() if code.startswith("5"))
    hangs = errors.get("hang (client timeout)", 0)
    return {
        "clients": clients,
        "duration_s": duration_s,
        "wall_s": wall,
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "errors": dict(errors),
        "five_xx": five_xx,
        "hangs": hangs,
        "p50_s": percentile(latencies, 50),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies, default=float("nan")),
        "throughput_rps": sum(statuses.values()) / wall,
        "ok": five_xx == 0 and not errors,
    }


async def measure(args: argparse.Namespace, engine: Any = None) -> dict[str, Any]:
    options = {
        "clients": args.clients,
        "duration_s": args.duration_s,
        "client_timeout_s": args.client_timeout_s,
        "max_tokens": args.max_tokens,
    }
    if args.url:
        return await run_load(args.url, **options)
    async with http_server(settings_for(args), engine) as url:
        return await run_load(url, **options)


# The columns of its table (here and in docs/benchmarks.md), with their headers.
COLUMNS = dict(
    clients="clients",
    duration_s="s",
    requests="requests",
    statuses="statuses",
    five_xx="5xx",
    hangs="hangs",
    p50_s="p50 s",
    p99_s="p99 s",
    throughput_rps="req/s",
)


def report(result: dict[str, Any]) -> None:
    rows = [[result[k] for k in COLUMNS]]
    verdict = "OK" if result["ok"] else f"FAILED {result['errors']}"
    table(
        f"Load test: {verdict}",
        ["clients", "s", "requests", "statuses", "5xx", "hangs", "p50 s", "p99 s", "req/s"],
        rows,
    )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--url", default=None, help="a running server (default: serve --model here)")
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--duration-s", type=float, default=60.0)
    p.add_argument("--client-timeout-s", type=float, default=120.0, help="longer than this counts as a hang")
    p.add_argument("--max-tokens", type=int, default=16)
    args = p.parse_args(argv)
    if args.quick:
        args.clients, args.duration_s, args.max_tokens = 20, 5.0, 4
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    result = asyncio.run(measure(args))
    publish(NAME, args, result, report)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
