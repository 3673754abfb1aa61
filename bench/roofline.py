"""The machine's arithmetic peak: a large matrix multiply on every core, per dtype.

Every throughput figure on docs/benchmarks.md is also given as a fraction of this peak
(achieved FLOP/s = tokens/s x 2 x the model's non-embedding parameters), so a number can
be read against what the hardware could do at best. The probe multiplies two square
matrices big enough to be compute-bound (n = 2048 on CPU, 8192 on GPU) with torch's
default BLAS on all usable cores, after a warm-up, and keeps the best of several runs.

Beside it, the ceiling of the model's own shapes: one decoder layer's projections on a
2048-token activation (a full engine step of prefill), in the engine's dtype.

    python -m bench.roofline            # full: float32 and bfloat16, ~1 min on CPU
    python -m bench.roofline --quick    # smoke run
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from bench.common import Script, table, weight_shapes

NAME = "roofline"


def matmul_peak(dtype_name: str, *, n: int, repeats: int, device: str = "cpu") -> dict[str, Any]:
    """Best FLOP/s of `repeats` timed n x n x n products (2 n^3 FLOPs each)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = best_seconds(lambda: torch.matmul(a, b), repeats=repeats, device=device)
    return {"dtype": dtype_name, "n": n, "seconds": best, "flops": 2 * n**3 / best}


def best_seconds(work: Callable[[], object], *, repeats: int, device: str) -> float:
    """Shortest of `repeats` timed runs of `work`, after one warm-up run (thread pool,
    kernel selection); on CUDA each run is timed to its completion."""
    import torch

    work()
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        work()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


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


def layer_shapes(model_dir: str) -> list[tuple[int, int]]:
    """(out, in) of every 2-D weight of the model's first decoder layer: its projections."""
    return [
        (shape[0], shape[1])
        for name, shape in weight_shapes(model_dir)
        if ".layers.0." in name and len(shape) == 2
    ]


def model_shape_peak(
    model_dir: str, dtype_name: str, *, tokens: int = 2048, repeats: int = 10, device: str = "cpu"
) -> dict[str, Any]:
    """Best FLOP/s of one decoder layer's projections on a `tokens`-row activation.

    A small model's projections are thin (hidden size 576 for the embedded model), and thin
    products may use the cores less well than the square probe. This is the ceiling of the
    model's own matrix shapes at a full engine step of prefill (vLLM's default step budget
    is 2048 tokens), the figure a prefill-bound benchmark can at best approach; attention,
    norms and the rest of a forward pass come on top.
    """
    import torch

    dtype = getattr(torch, dtype_name)
    shapes = layer_shapes(model_dir)
    if not shapes:
        raise ValueError(f"{model_dir}: no 2-D weights in a layer named '.layers.0.'")
    weights = [torch.randn(out, inp, device=device).to(dtype) for out, inp in shapes]
    inputs = {inp: torch.randn(tokens, inp, device=device).to(dtype) for _, inp in shapes}

    def layer() -> None:
        for w in weights:
            torch.matmul(inputs[w.shape[1]], w.t())

    best = best_seconds(layer, repeats=repeats, device=device)
    flops = 2 * tokens * sum(out * inp for out, inp in shapes)
    return {"dtype": dtype_name, "tokens": tokens, "shapes": shapes, "seconds": best, "flops": flops / best}


def engine_dtype() -> str:
    """The dtype the engine runs the embedded model in (see VLLMEngine.start)."""
    import torch

    from service.engine.cpu import cpu_has_native_bf16

    return "bfloat16" if torch.cuda.is_available() or cpu_has_native_bf16() else "float32"


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    from bench.common import model_dir_for

    result = peaks(n=args.n, repeats=args.repeats)
    result["engine_dtype"] = engine_dtype()
    dtype, device = result["engine_dtype"], result["device"]
    result["model_shapes"] = model_shape_peak(
        model_dir_for(args), dtype, tokens=args.tokens, repeats=args.repeats, device=device
    )
    return result


def report(result: dict[str, Any]) -> None:
    rows = [[d, p["n"], p["flops"] / 1e9, d == result["engine_dtype"]] for d, p in result["dtypes"].items()]
    if "model_shapes" in result:
        m = result["model_shapes"]
        rows.append([f"{m['dtype']}, model's layer", f"{m['tokens']} tokens", m["flops"] / 1e9, True])
    table(
        f"Matmul peak on {result['device']} ({result['threads']} threads)",
        ["dtype", "n", "GFLOP/s", "engine dtype"],
        rows,
    )


QUICK: dict[str, Any] = {"n": 256, "repeats": 2, "tokens": 64}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=int, default=None, help="matrix size (default 2048 on CPU, 8192 on GPU)")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--tokens", type=int, default=2048, help="activation rows of the model-shape probe")


SCRIPT = Script(NAME, __doc__, options, QUICK, measure, report)
parse, main = SCRIPT.parse, SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())
