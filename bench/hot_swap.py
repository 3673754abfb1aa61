"""Latency during an adapter hot swap vs steady state, over HTTP on the real engine.

The adapter is served from a scratch adapter root holding it twice, as `v1` and as
`swap-v2` (same weights, its own version and vLLM LoRA identity). N closed-loop clients
alternate /generate and /score for a steady-state window; then, with the clients still
running, the admin API loads `swap-v2` (validate + load + warm up), makes it the
default and unloads `v1` (POST /admin/adapters, PUT /admin/adapters/default, DELETE
/admin/adapters/{name}/{version}). Reports p50/p99 of requests that started in each
window, failures (must be 0) and how long each admin call took.

    python -m bench.hot_swap            # full: 16 clients, 20 s steady state
    python -m bench.hot_swap --quick    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import QUESTIONS, Script, http_server, percentile, settings_for, table

NAME = "hot_swap"
TOKEN = "bench-hot-swap"
NEW_VERSION = "swap-v2"


def scratch_root(adapter: Path, into: Path) -> Path:
    """<into>/<name>/{v1,swap-v2}: the adapter twice, manifests naming their own version."""
    from service.lora.manifest import AdapterManifest

    name = adapter.parent.name
    for version in ("v1", NEW_VERSION):
        dest = into / name / version
        shutil.copytree(adapter, dest)
        manifest = AdapterManifest.read(dest)
        manifest.version = version
        manifest.write(dest)
    return into / name / "v1"


async def measure(args: argparse.Namespace, engine: Any = None) -> dict[str, Any]:
    import httpx

    with tempfile.TemporaryDirectory(prefix="bench-hot-swap-") as tmp:
        served = argparse.Namespace(**{**vars(args), "adapter": scratch_root(args.adapter, Path(tmp))})
        name = served.adapter.parent.name
        settings = settings_for(served, admin_token=TOKEN, default_max_tokens=args.max_tokens)
        log: list[tuple[float, float, int]] = []  # (start, latency, status)
        stop = asyncio.Event()
        async with (
            http_server(settings, engine) as url,
            httpx.AsyncClient(base_url=url, timeout=600) as client,
        ):

            async def worker(n: int) -> None:
                i = n
                while not stop.is_set():
                    started = time.monotonic()
                    if i % 2:
                        body = {"items": [{"question": QUESTIONS[i % 16], "answer": "I think 42."}]}
                        response = await client.post("/score", json=body)
                    else:
                        response = await client.post("/generate", json={"prompt": QUESTIONS[i % 16]})
                    log.append((started, time.monotonic() - started, response.status_code))
                    i += 1

            workers = [asyncio.create_task(worker(n)) for n in range(args.clients)]
            steady_from = time.monotonic()
            await asyncio.sleep(args.steady_s)
            auth = {"Authorization": f"Bearer {TOKEN}"}
            swap_from = time.monotonic()
            admin: dict[str, float] = {}
            steps = [
                ("load", "POST", "/admin/adapters", {"name": name, "version": NEW_VERSION}),
                ("make_default", "PUT", "/admin/adapters/default", {"adapter": f"{name}@{NEW_VERSION}"}),
                ("unload_old", "DELETE", f"/admin/adapters/{name}/v1", None),
            ]
            for step, method, path, body in steps:
                started = time.monotonic()
                response = await client.request(method, path, json=body, headers=auth)
                response.raise_for_status()
                admin[step] = time.monotonic() - started
            swap_to = time.monotonic()
            await asyncio.sleep(args.after_s)
            stop.set()
            await asyncio.gather(*workers)
    steady = [r for r in log if steady_from <= r[0] < swap_from]
    during = [r for r in log if swap_from <= r[0] < swap_to]
    return {
        "clients": args.clients,
        "steady_state": window(steady),
        "during_swap": window(during),
        "admin_call_s": admin,
        "failed_requests": sum(1 for r in log if r[2] != 200),
        "requests": len(log),
    }


def window(rows: list[tuple[float, float, int]]) -> dict[str, Any]:
    latencies = [r[1] for r in rows]
    return {"requests": len(rows), "p50_s": percentile(latencies, 50), "p99_s": percentile(latencies, 99)}


def report(result: dict[str, Any]) -> None:
    rows = [
        [w, result[w]["requests"], result[w]["p50_s"], result[w]["p99_s"]]
        for w in ("steady_state", "during_swap")
    ]
    admin = ", ".join(f"{k} {v:.2f} s" for k, v in result["admin_call_s"].items())
    title = f"Hot swap with {result['clients']} clients ({result['failed_requests']} failed; {admin})"
    table(title, ["window", "requests", "p50 s", "p99 s"], rows)


QUICK: dict[str, Any] = {"clients": 4, "steady_s": 2.0, "after_s": 1.0, "max_tokens": 4}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--steady-s", type=float, default=20.0)
    p.add_argument("--after-s", type=float, default=5.0)
    p.add_argument("--max-tokens", type=int, default=32)


SCRIPT = Script(NAME, __doc__, options, QUICK, measure, report)
parse, main = SCRIPT.parse, SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())
