"""This service's /v1/chat/completions (answer + confidence) vs vLLM's own OpenAI server.

Both arms get the same greedy chat requests over loopback HTTP, on the same model and
machine, one after the other (never at once: they would share the cores): "vllm" is
`python -m vllm.entrypoints.openai.api_server` in a subprocess, "confidence" this
service's app with its shipped adapter. The ratio is what the confidence costs a user who
switches from vLLM's server to this one: latency (p50) and throughput at 1 and 16 clients.
Run it on an idle machine: the numbers are timings.

    python -m bench.openai_vs_vllm            # full: 64 requests per arm and client count
    python -m bench.openai_vs_vllm --quick    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bench.common import (
    QuestionPool,
    Script,
    Timing,
    closed_loop,
    free_port,
    http_server,
    settings_for,
    table,
    wait_ready,
)

NAME = "openai_vs_vllm"
VLLM_READY_TIMEOUT_S = 900


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=64, help="requests per arm and client count")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 16])
    p.add_argument("--max-tokens", type=int, default=32)


def vllm_command(model: str, port: int, args: argparse.Namespace, served_name: str) -> list[str]:
    """vLLM's OpenAI server sized like this service's engine (context, KV cache, dtype)."""
    from vllm.platforms import current_platform

    from service.engine.cpu import cpu_has_native_bf16
    from service.engine.vllm_engine import DEFAULT_CPU_BLOCK_SIZE, DEFAULT_CPU_KV_CACHE_GIB

    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--served-model-name", served_name, "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", str(args.max_model_len),
    ]  # fmt: skip
    on_cpu = current_platform.is_cpu()
    kv_gib = args.kv_cache_gib or (DEFAULT_CPU_KV_CACHE_GIB if on_cpu else None)
    if kv_gib is not None:
        command += ["--kv-cache-memory-bytes", str(int(kv_gib * (1 << 30)))]
    if on_cpu and not cpu_has_native_bf16():
        command += ["--dtype", "float32"]  # as VLLMEngine does: emulated bf16 is slower
    if on_cpu:
        command += ["--block-size", str(DEFAULT_CPU_BLOCK_SIZE)]  # as VLLMEngine does
    return command


def vllm_environment() -> dict[str, str]:
    """The service's CPU thread binding for vLLM's server too (`thread_defaults`), so both
    arms use the same cores."""
    from vllm.platforms import current_platform

    from service.engine.cpu import thread_defaults, usable_cpus

    extra = thread_defaults(os.environ, usable_cpus()) if current_platform.is_cpu() else {}
    return {**os.environ, **extra}


@asynccontextmanager
async def vllm_server(model: str, args: argparse.Namespace, served_name: str) -> AsyncIterator[str]:

    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="bench-vllm-")) / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            vllm_command(model, port, args, served_name),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=vllm_environment(),
        )
    url = f"http://127.0.0.1:{port}"

    def check_alive() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM's server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")

    try:
        await wait_ready(f"{url}/health", check_alive, timeout_s=VLLM_READY_TIMEOUT_S)
        yield url
    finally:
        proc.terminate()  # vLLM shuts its engine down on SIGTERM
        await asyncio.to_thread(proc.wait)


def chat_call(
    client: Any, model: str, max_tokens: int, confidences: list[float], questions: list[str]
) -> Callable[[int], Awaitable[None]]:
    async def call(i: int) -> None:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": questions[i]}],
            "max_tokens": max_tokens,
            "temperature": 0,
        }
        response = await client.post("/v1/chat/completions", json=body)
        response.raise_for_status()
        choice = response.json()["choices"][0]
        if "confidence" in choice:
            confidences.append(choice["confidence"]["value"])

    return call


async def run_arm(
    url: str, model: str, args: argparse.Namespace, questions: dict[int, tuple[list[str], list[str]]]
) -> dict[str, Any]:
    """`questions[clients]`: (warm-up, measured) questions; both arms get the same ones."""
    import httpx

    rows: dict[str, Any] = {}
    confidences: list[float] = []
    limits = httpx.Limits(max_connections=max(args.clients) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        for clients in args.clients:
            warm, measured = questions[clients]
            call = chat_call(client, model, args.max_tokens, confidences, warm)
            await closed_loop(call, requests=clients, concurrency=clients)  # warm this batch size
            call = chat_call(client, model, args.max_tokens, confidences, measured)
            timing: Timing = await closed_loop(call, requests=args.requests, concurrency=clients)
            rows[str(clients)] = timing.summary()
    return {"clients": rows, "confidences_returned": len(confidences)}


async def measure(args: argparse.Namespace, engine: Any = None) -> dict[str, Any]:
    from service.serving.lifecycle import resolve_model

    model = args.model or await asyncio.to_thread(resolve_model, settings_for(args))
    name = Path(model).name
    settings = settings_for(args, served_model_name=name, max_tokens_limit=max(args.max_tokens, 1024))
    # Distinct questions (no request finds another's prompt cached), the same for both arms.
    pool = QuestionPool()
    questions = {c: (pool.take(c), pool.take(args.requests)) for c in args.clients}
    async with vllm_server(model, args, name) as url:
        vllm = await run_arm(url, name, args, questions)
    async with http_server(settings, engine) as url:
        ours = await run_arm(url, name, args, questions)
    ratios = {}
    for clients in map(str, args.clients):
        mine, theirs = ours["clients"][clients], vllm["clients"][clients]
        ratios[clients] = {
            "latency_p50_ratio": mine["p50_s"] / theirs["p50_s"],
            "throughput_ratio": mine["throughput_rps"] / theirs["throughput_rps"],
        }
    return {
        "requests": args.requests,
        "max_tokens": args.max_tokens,
        "vllm": vllm,
        "confidence": ours,
        "ratios": ratios,
        "cpu_count": os.cpu_count(),
    }


def report(result: dict[str, Any]) -> None:
    rows = []
    for clients, ratio in result["ratios"].items():
        mine, theirs = result["confidence"]["clients"][clients], result["vllm"]["clients"][clients]
        rows.append(
            [
                clients,
                theirs["p50_s"],
                mine["p50_s"],
                ratio["latency_p50_ratio"],
                theirs["throughput_rps"],
                mine["throughput_rps"],
                ratio["throughput_ratio"],
            ]
        )
    columns = ["clients", "vLLM p50 s", "ours p50 s", "latency ×", "vLLM req/s", "ours req/s", "throughput ×"]
    table("/v1/chat/completions with confidence vs vLLM's OpenAI server", columns, rows)


SCRIPT = Script(
    name=NAME,
    doc=__doc__,
    options=options,
    quick={"requests": 4, "clients": [1, 2], "max_tokens": 4},
    measure=measure,
    report=report,
)
parse = SCRIPT.parse

if __name__ == "__main__":
    raise SystemExit(SCRIPT.main())
