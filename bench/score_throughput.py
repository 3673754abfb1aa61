"""/score throughput over HTTP vs a naive per-request transformers + peft loop.

Server arm: the real app (uvicorn on loopback, real vLLM engine, the adapter as served,
method `adapter`: the baseline's method, whatever the version's default) under N closed-loop
clients, each POSTing /score with B items, for N in 1/8/32 and B in 1/16: items per second.
Baseline: the paper's own approach, one transformers + peft forward per item
(adapters/train.py `label_logit_gaps` with batch size 1, model and adapter loaded once), on the
same model, adapter and items. Goal: >= 4x at 32 clients.
Also: the best point's achieved FLOP/s (query tokens/s x 2 x non-embedding parameters) as
a fraction of the machine's matmul peak in the engine's dtype (`bench.roofline`), measured
in the same run before the server starts. Goal: >= 60 % at 32 clients x 16 items. And as a
fraction of the model-shape ceiling (one layer's projections on a 2048-token activation):
how close the engine gets to what this model's matrices allow.

    python -m bench.score_throughput            # full
    python -m bench.score_throughput --quick    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from typing import Any

from bench.common import (
    GRADED,
    Script,
    achieved,
    closed_loop,
    http_server,
    model_dir_for,
    non_embedding_parameters,
    settings_for,
    table,
)
from bench.roofline import engine_dtype, model_shape_peak, peaks

NAME = "score_throughput"


def items(n: int | None = None) -> list[dict[str, str]]:
    """Distinct (question, answer) pairs of the graded file (every split: this measures speed)."""
    from adapters.data import read_graded_jsonl

    records = read_graded_jsonl(GRADED)
    return [{"question": r.question, "answer": r.answer} for r in records[:n]]


async def server_arm(args: argparse.Namespace, engine: Any, pool: list[dict[str, str]]) -> dict[str, Any]:
    import httpx

    biggest = max(args.clients) * max(args.batches)
    settings = settings_for(args, max_score_items=max(args.batches), max_inflight_sequences=max(biggest, 256))
    points: dict[str, Any] = {}
    needed = sum(b * c * (1 + args.requests) for b in args.batches for c in args.clients)
    if needed > len(pool):
        raise SystemExit(f"these sizes score {needed} items; the graded file has {len(pool)} distinct ones")
    fresh = iter(pool)
    async with http_server(settings, engine) as url:
        limits = httpx.Limits(max_connections=max(args.clients) + 4)
        async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
            for batch in args.batches:

                async def call(i: int, batch: int = batch) -> None:
                    # Every item is scored once: a repeated query would come from the prefix cache.
                    chunk = [next(fresh) for _ in range(batch)]
                    # The baseline reads LoRA + Prompt only: the same method on both arms (a
                    # version with a head would otherwise default to it, one prefill more per item).
                    response = await client.post("/score", json={"items": chunk, "method": "adapter"})
                    response.raise_for_status()

                for clients in args.clients:
                    await closed_loop(call, requests=clients, concurrency=clients)  # warm this shape
                    timing = await closed_loop(call, requests=args.requests * clients, concurrency=clients)
                    summary = timing.summary()
                    summary["items_per_s"] = summary["throughput_rps"] * batch
                    points[f"clients={clients},batch={batch}"] = {
                        "clients": clients,
                        "batch": batch,
                        **summary,
                    }
    return points


def naive_arm(args: argparse.Namespace, pool: list[dict[str, str]], temperature: float) -> dict[str, Any]:
    """One transformers + peft forward per item, the way the paper scores."""
    import torch
    from peft import PeftModel

    from adapters.train import label_logit_gaps, load_base
    from service.calibration.query import sigmoid

    model_dir = model_dir_for(args)
    base, tokenizer = load_base(model_dir, "float32")
    model = PeftModel.from_pretrained(base, str(args.adapter))
    if torch.cuda.is_available():
        model = model.to("cuda")
    label_logit_gaps(model, None, pool[:1], batch_size=1, tokenizer=tokenizer)  # warm-up
    n = args.naive_items
    started = time.perf_counter()
    for i in range(n):
        (gap,) = label_logit_gaps(model, None, [pool[i % len(pool)]], batch_size=1, tokenizer=tokenizer)
        sigmoid(float(gap) / temperature)
    seconds = time.perf_counter() - started
    return {"items": n, "seconds": seconds, "items_per_s": n / seconds}


async def measure(args: argparse.Namespace, engine: Any = None) -> dict[str, Any]:
    from service.lora.manifest import AdapterManifest

    pool = items()
    model_dir = model_dir_for(args)
    peak = peaks()  # before the engine starts: the cores are otherwise idle
    peak["model_shapes"] = model_shape_peak(model_dir, engine_dtype(), device=peak["device"])
    tokens_per_item = mean_query_tokens(model_dir, pool)
    server = await server_arm(args, engine, pool)
    naive = await asyncio.to_thread(naive_arm, args, pool, AdapterManifest.read(args.adapter).temperature)
    top = max(args.clients)
    best_at_top = max(p["items_per_s"] for p in server.values() if p["clients"] == top)
    parameters = non_embedding_parameters(model_dir)
    peak_flops = peak["dtypes"][engine_dtype()]["flops"]
    for point in server.values():
        point["compute"] = achieved(point["items_per_s"] * tokens_per_item, parameters, peak_flops)
        # The same FLOP/s against what the model's own thin matrices reach on this machine.
        model_peak = peak["model_shapes"]["flops"]
        point["compute"]["fraction_of_model_shape_peak"] = point["compute"]["flops"] / model_peak
    return {
        "peak": peak,
        "non_embedding_parameters": parameters,
        "query_tokens_per_item": tokens_per_item,
        "best_fraction_of_peak_at_top_clients": max(
            p["compute"]["fraction_of_peak"] for p in server.values() if p["clients"] == top
        ),
        "goal_fraction_of_peak": 0.6,
        "server": server,
        "naive_transformers_peft": naive,
        "clients_for_ratio": top,
        "ratio_at_top_clients": best_at_top / naive["items_per_s"] if naive["items_per_s"] else math.nan,
        "goal_ratio": 4.0,
    }


def mean_query_tokens(model_dir: str, pool: list[dict[str, str]]) -> float:
    """Mean length in tokens of the confidence query of the pool's items, as served."""
    from transformers import AutoTokenizer

    from service.calibration import query as cq

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = [
        len(cq.query_ids(tokenizer, [{"role": "user", "content": i["question"]}], i["answer"])) for i in pool
    ]
    return sum(lengths) / len(lengths)


def report(result: dict[str, Any]) -> None:
    naive = result["naive_transformers_peft"]["items_per_s"]
    rows = [
        [
            p["clients"],
            p["batch"],
            p["items_per_s"],
            p["items_per_s"] / naive,
            p["p50_s"],
            p["p99_s"],
            p.get("compute", {}).get("fraction_of_peak"),
        ]
        for p in result["server"].values()
    ]
    rows.append(["naive loop", 1, naive, 1.0, None, None, None])
    title = (
        f"/score throughput vs per-item transformers+peft: {result['ratio_at_top_clients']:.1f}x at "
        f"{result['clients_for_ratio']} clients (goal >= 4x)"
    )
    table(title, ["clients", "batch", "items/s", "x naive", "p50 s", "p99 s", "of peak FLOP/s"], rows)


QUICK: dict[str, Any] = {"clients": [1, 4], "batches": [1, 4], "requests": 2, "naive_items": 8}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--requests", type=int, default=6, help="requests per client at each point")
    p.add_argument("--naive-items", type=int, default=128)


SCRIPT = Script(NAME, __doc__, options, QUICK, measure, report)
parse, main = SCRIPT.parse, SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())
