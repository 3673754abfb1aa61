"""Growth: /generate with confidence vs plain generation, against concurrency and answer length.

The overhead benchmark's two main arms (`bench.overhead`: plain `engine.generate` vs
`ConfidenceService.generate` with the server's default method, same engine, same greedy
prompts) at 1, 4, 16 and 64 closed-loop clients and 16, 64 and 256 new tokens; each point
runs plain, confidence, confidence, plain (half the requests each time) to cancel drift, the
two arms of each half on the same questions, each run on an emptied prefix cache.
Writes the JSON and a plot, docs/benchmarks_scaling.png: the latency ratio and each arm's
throughput against clients, one line per answer length.

    python -m bench.scaling            # full: ~10 min on an idle 2-core CPU
    python -m bench.scaling --quick    # smoke run
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from bench.common import (
    REPO,
    QuestionPool,
    Script,
    Timing,
    closed_loop,
    in_process_service,
    settings_for,
    table,
)

NAME = "scaling"
PLOT = REPO / "docs" / "benchmarks_scaling.png"


async def measure(args: argparse.Namespace, engine: Any = None) -> dict[str, Any]:
    from service.api.protocol import GenerateRequest
    from service.calibration import query as cq
    from service.engine.base import SamplingOptions

    longest = max(args.lengths)
    settings = settings_for(args, default_max_tokens=longest, max_tokens_limit=max(longest, 1024))
    points: dict[str, Any] = {}
    method = None
    pool = QuestionPool()
    current: list[str] = []  # each run asks questions no other request asked (QuestionPool)
    async with in_process_service(settings, engine) as (service, _):
        tokenizer = service.engine.tokenizer
        for length in args.lengths:
            options = SamplingOptions(max_tokens=length)

            async def plain(i: int, options: SamplingOptions = options) -> None:
                chat = [{"role": "user", "content": current[i]}]
                prompt = cq.encode_rendered(tokenizer, cq.render(tokenizer, chat))
                await service.engine.generate(prompt, options)

            async def confidence(i: int, length: int = length) -> None:
                nonlocal method
                question = current[i]
                response = await service.generate(GenerateRequest(prompt=question, max_tokens=length))
                method = response.method.value

            for clients in args.clients:
                requests = max(args.min_requests, 2 * clients)
                current[:] = pool.take(clients)
                await closed_loop(plain, requests=clients, concurrency=clients)  # warm this batch size
                runs: dict[str, list[Timing]] = {"plain": [], "confidence": []}
                # Both arms answer the same questions (answer lengths vary a lot between
                # questions), each run on an emptied prefix cache so the second arm is not served
                # the first one's blocks.
                first, second = pool.take(requests // 2), pool.take(requests // 2)
                order = (
                    ("plain", plain, first),
                    ("confidence", confidence, first),
                    ("confidence", confidence, second),
                    ("plain", plain, second),
                )
                for arm, call, questions in order:
                    current[:] = questions
                    await service.engine.reset_prefix_cache()
                    runs[arm].append(await closed_loop(call, requests=requests // 2, concurrency=clients))
                summary = {arm: Timing.merged(t).summary() for arm, t in runs.items()}
                points[f"tokens={length},clients={clients}"] = {
                    "max_tokens": length,
                    "clients": clients,
                    **summary,
                    "latency_ratio": summary["confidence"]["mean_s"] / summary["plain"]["mean_s"],
                    "throughput_ratio": summary["plain"]["throughput_rps"]
                    / summary["confidence"]["throughput_rps"],
                }
    out = plot(points, args.plot)
    return {
        "method": method,
        "points": points,
        "plot": str(out.relative_to(REPO) if out.is_relative_to(REPO) else out),
    }


def plot(points: dict[str, Any], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for length in sorted({p["max_tokens"] for p in points.values()}):
        row = sorted((p for p in points.values() if p["max_tokens"] == length), key=lambda p: p["clients"])
        clients = [p["clients"] for p in row]
        left.plot(clients, [p["latency_ratio"] for p in row], marker="o", label=f"{length} tokens")
        (line,) = right.plot(
            clients, [p["plain"]["throughput_rps"] for p in row], marker="o", label=f"plain, {length} tok"
        )
        right.plot(
            clients,
            [p["confidence"]["throughput_rps"] for p in row],
            marker="s",
            linestyle="--",
            color=line.get_color(),
            label=f"confidence, {length} tok",
        )
    left.axhline(1.15, color="grey", linestyle=":", label="goal 1.15")
    left.set(xscale="log", xlabel="concurrent clients", ylabel="mean latency: confidence / plain")
    right.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="requests/s")
    for ax in (left, right):
        ax.set_xticks(sorted({p["clients"] for p in points.values()}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("/generate with confidence vs plain generation (same engine)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


COLUMNS = [
    "new tokens",
    "clients",
    "plain mean s",
    "conf. mean s",
    "latency ratio",
    "plain req/s",
    "conf. req/s",
]


def rows(result: dict[str, Any]) -> list[list[Any]]:
    """One row per point, in COLUMNS order (also the docs table)."""
    return [
        [
            p["max_tokens"],
            p["clients"],
            p["plain"]["mean_s"],
            p["confidence"]["mean_s"],
            p["latency_ratio"],
            p["plain"]["throughput_rps"],
            p["confidence"]["throughput_rps"],
        ]
        for p in result["points"].values()
    ]


def report(result: dict[str, Any]) -> None:
    table(f"Scaling (confidence method: {result['method']}); plot: {result['plot']}", COLUMNS, rows(result))


QUICK: dict[str, Any] = {"clients": [1, 4], "lengths": [4, 8], "min_requests": 2}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    p.add_argument("--lengths", type=int, nargs="+", default=[16, 64, 256], help="new tokens per answer")
    p.add_argument("--min-requests", type=int, default=8, help="requests per arm at least (else 2 x clients)")
    p.add_argument("--plot", type=Path, default=PLOT)


SCRIPT = Script(NAME, __doc__, options, QUICK, measure, report)
parse, main = SCRIPT.parse, SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())
