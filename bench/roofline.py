"""The machine's arithmetic peak: a large matrix multiply on every core, per dtype.

Every throughput figure on docs/benchmarks.md is also given as a fraction of this peak
(achieved FLOP/s = tokens/s x 2 x the model's non-embedding parameters), so a number can
be read against what the hardware could do at best. The probe multiplies two square
matrices big enough to be compute-bound (n = 2048 on CPU, 8192 on GPU) with torch's
default BLAS on all usable cores, after a warm-up, and keeps the best of several runs.

    python -m bench.roofline            # full: float32 and bfloat16, ~1 min on CPU
    python -m bench.roofline --quick    # smoke run
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from bench.common import Script, table

NAME = "roofline"


def matmul_peak(dtype_name: str, *, n: int, repeats: int, device: str = "cpu") -> dict[str, Any]:
    """Best FLOP/s of `repeats` timed n x n x n products (2 n^3 FLOPs each)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.matmul(a, b)  # warm-up: thread pool, kernel selection
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        torch.matmul(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return {"dtype": dtype_name, "n": n, "seconds": best, "flops": 2 * n**3 / best}


def peaks(*, n: int | None = None, repeats: int = 10) -> dict[str, Any]:
    """Peak FLOP/s per dtype on the device the engine would use, with the thread count."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    size = n or (8192 if device == "cuda" else 2048)
    return {
        "device": device,
        "threads": torch.get_num_threads(),
        "dtypes": {
            d: matmul_peak(d, n=size, repeats=repeats, device=device) for d in ("float32", "bfloat16")
        },
    }


def engine_dtype() -> str:
    """The dtype the engine runs the embedded model in (see VLLMEngine.start)."""
    import torch

    from service.engine.cpu import cpu_has_native_bf16

    return "bfloat16" if torch.cuda.is_available() or cpu_has_native_bf16() else "float32"


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    result = peaks(n=args.n, repeats=args.repeats)
    result["engine_dtype"] = engine_dtype()
    return result


def report(result: dict[str, Any]) -> None:
    rows = [[d, p["n"], p["flops"] / 1e9, d == result["engine_dtype"]] for d, p in result["dtypes"].items()]
    table(
        f"Matmul peak on {result['device']} ({result['threads']} threads)",
        ["dtype", "n", "GFLOP/s", "engine dtype"],
        rows,
    )


QUICK: dict[str, Any] = {"n": 256, "repeats": 2}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=None, help="matrix size (default 2048 on CPU, 8192 on GPU)")
    p.add_argument("--repeats", type=int, default=10)


SCRIPT = Script(NAME, __doc__, options, QUICK, measure, report)
parse, main = SCRIPT.parse, SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())
