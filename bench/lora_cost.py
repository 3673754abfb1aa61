"""Cost of a LoRA forward vs a base forward, with and without the CPU LoRA patch.

What the confidence read costs is one prefill of the query through the adapter. This
times that prefill (`next_token_logprobs`, max_tokens = 1) through the base model and
through the adapter, one request alone and 16 at once (batched by vLLM), and reports
LoRA/base per request. Target on CPU: <= 1.3x at batch 16.

Two arms, each in its own process because vLLM loads plugins when its processes start:
`patched` (the `confidence_cpu_lora` plugin active: service/engine/cpu_lora_patch.py) and
`unpatched` (VLLM_PLUGINS set to every other installed general plugin, so vLLM runs its
own CPU LoRA ops). On GPU the patch never applies, both arms run vLLM's Punica kernels
and the script still runs and says so.

    python -m bench.lora_cost            # full: both arms, 20 repeats
    python -m bench.lora_cost --quick    # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from bench.common import QuestionPool, in_process_service, parser, publish, settings_for, table

NAME = "lora_cost"
PLUGIN = "confidence_cpu_lora"
ARMS = ("patched", "unpatched")


def arm_env(arm: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("VLLM_PLUGINS", None)
    if arm == "unpatched":
        others = [ep.name for ep in entry_points(group="vllm.general_plugins") if ep.name != PLUGIN]
        env["VLLM_PLUGINS"] = ",".join(others)  # "" parses to [""]: no plugin at all
    return env


def plugin_enabled() -> bool:
    allowed = os.environ.get("VLLM_PLUGINS")
    return allowed is None or PLUGIN in allowed.split(",")


async def measure_arm(args: argparse.Namespace, engine: Any = None) -> dict[str, Any]:
    """Per-request prefill time, base vs LoRA, at each batch size, in this process."""
    from service.calibration import query as cq
    from service.engine.cpu_lora_patch import should_patch

    async with in_process_service(settings_for(args), engine) as (service, _):
        adapter = service.registry.default_adapter()
        assert adapter is not None, f"no servable adapter at {args.adapter}"
        tok, labels = service.engine.tokenizer, [service.labels.no_id, service.labels.yes_id]
        pool = QuestionPool()

        async def batch(size: int, lora: Any) -> float:
            # Fresh questions every time: a query seen before would be served from the prefix cache.
            queries = [
                cq.query_ids(tok, [{"role": "user", "content": q}], "I believe it is 42.")
                for q in pool.take(size)
            ]
            started = time.perf_counter()
            await asyncio.gather(*(service.engine.next_token_logprobs(q, labels, lora=lora) for q in queries))
            return time.perf_counter() - started

        sizes: dict[str, Any] = {}
        for size in args.batch_sizes:
            times: dict[str, list[float]] = {"base": [], "lora": []}
            await batch(size, None), await batch(size, adapter.lora)  # warm both paths at this size
            for _ in range(args.repeats):  # interleaved, so drift hits both alike
                times["base"].append(await batch(size, None))
                times["lora"].append(await batch(size, adapter.lora))
            per_request = {k: statistics.median(v) / size for k, v in times.items()}
            sizes[str(size)] = {
                "base_ms_per_request": 1000 * per_request["base"],
                "lora_ms_per_request": 1000 * per_request["lora"],
                "lora_over_base": per_request["lora"] / per_request["base"],
            }
    return {
        "plugin_enabled": plugin_enabled(),
        "patch_applies": plugin_enabled() and should_patch(),
        "batch": sizes,
    }


def run_arm_subprocess(arm: str, argv: list[str]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{arm}.json"
        cmd = [sys.executable, "-m", "bench.lora_cost", *argv, "--arm", arm, "--arm-out", str(out)]
        subprocess.run(cmd, env=arm_env(arm), check=True, cwd=Path(__file__).resolve().parent.parent)
        result: dict[str, Any] = json.loads(out.read_text())
        return result


def combine(arms: dict[str, dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    top = str(max(args.batch_sizes))
    return {
        "arms": arms,
        "target_lora_over_base_at_16": 1.3,
        "lora_over_base_at_largest_batch": {
            arm: r["batch"][top]["lora_over_base"] for arm, r in arms.items()
        },
    }


def report(result: dict[str, Any]) -> None:
    rows = []
    for arm, r in result["arms"].items():
        label = f"{arm} ({'patch active' if r['patch_applies'] else 'vLLM ops'})"
        for size, b in r["batch"].items():
            rows.append(
                [label, size, b["base_ms_per_request"], b["lora_ms_per_request"], b["lora_over_base"]]
            )
    columns = ["arm", "batch", "base ms/req", "LoRA ms/req", "LoRA/base"]
    table("LoRA vs base prefill per request (target <= 1.3x at batch 16 on CPU)", columns, rows)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--arm", choices=ARMS, default=None, help=argparse.SUPPRESS)
    p.add_argument("--arm-out", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.repeats = [1, 4], 2
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.arm is not None:  # one arm, in this process (started by the parent below)
        result = asyncio.run(measure_arm(args))
        args.arm_out.write_text(json.dumps(result))
        return 0
    passed = [a for a in argv if a not in ("--arm", "--arm-out")]
    publish(NAME, args, combine({arm: run_arm_subprocess(arm, passed) for arm in ARMS}, args), report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
