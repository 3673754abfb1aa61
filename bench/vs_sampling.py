"""Cost and quality of LoRA + Prompt vs the sampling self-consistency baseline (k = 10).

On the held-out open-ended questions of the committed graded data (test split of
adapters/graded/smollm2-135m/train_mix.jsonl, the base model's own answers), on one real
engine: LoRA + Prompt is one prefill per item through the adapter (adapters/scoring.py
`query_gaps`, temperature-scaled as served); self-consistency samples k answers per item
and scores agreement with the greedy answer (`self_consistency`). Reports the wall time of
each for the same items, the cost ratio, and AUROC / ECE / Brier side by side
(service/calibration/metrics.py).

    python -m bench.vs_sampling            # full: 150 items
    python -m bench.vs_sampling --quick    # smoke run: 6 items, k = 3
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from bench.common import GRADED, Script, in_process_service, settings_for, table

NAME = "vs_sampling"
OPEN_KINDS = ("open", "numeric")


def held_out(limit: int) -> list[Any]:
    from adapters.data import read_graded_jsonl
    from adapters.evaluate import subsample

    records = [r for r in read_graded_jsonl(GRADED, split="test") if r.kind in OPEN_KINDS]
    return subsample(records, limit, seed=0)


def quality(p: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    from service.calibration import metrics

    return metrics.nan_to_none(
        {"auroc": metrics.auroc(p, y), "ece": metrics.ece(p, y), "brier": metrics.brier(p, y)}
    )


async def measure(args: argparse.Namespace, engine: Any = None) -> dict[str, Any]:
    from adapters import scoring
    from adapters.calibrate import apply_temperature

    records = held_out(args.items)
    y = np.array([float(r.correct) for r in records])
    async with in_process_service(settings_for(args), engine) as (service, _):
        adapter = service.registry.default_adapter()
        assert adapter is not None, f"no servable adapter at {args.adapter}"
        started = time.perf_counter()
        gaps = await scoring.query_gaps(service.engine, records, adapter.lora)
        lora_s = time.perf_counter() - started
        lora_p = apply_temperature(gaps, adapter.temperature)
        started = time.perf_counter()
        sc_p = await scoring.self_consistency(service.engine, records, k=args.k, seed=0)
        sc_s = time.perf_counter() - started
    return {
        "items": len(records),
        "accuracy": float(y.mean()),
        "k": args.k,
        "methods": {
            "lora_prompt": {
                "seconds": lora_s,
                "ms_per_item": 1000 * lora_s / len(records),
                **quality(lora_p, y),
            },
            f"self_consistency_k{args.k}": {
                "seconds": sc_s,
                "ms_per_item": 1000 * sc_s / len(records),
                **quality(np.asarray(sc_p, dtype=float), y),
            },
        },
        "cost_ratio": sc_s / lora_s,
    }


def report(result: dict[str, Any]) -> None:
    rows = [
        [name, m["seconds"], m["ms_per_item"], m["auroc"], m["ece"], m["brier"]]
        for name, m in result["methods"].items()
    ]
    title = (
        f"LoRA + Prompt vs self-consistency on {result['items']} held-out items "
        f"(accuracy {result['accuracy']:.3f}); cost ratio {result['cost_ratio']:.1f}x"
    )
    table(title, ["method", "total s", "ms/item", "AUROC", "ECE", "Brier"], rows)


QUICK: dict[str, Any] = {"items": 6, "k": 3}


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--items", type=int, default=150)
    p.add_argument("--k", type=int, default=10, help="samples per item for self-consistency")


SCRIPT = Script(NAME, __doc__, options, QUICK, measure, report)
parse, main = SCRIPT.parse, SCRIPT.main

if __name__ == "__main__":
    raise SystemExit(main())
