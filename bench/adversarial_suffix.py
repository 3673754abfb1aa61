"""How much do grader-style suffixes in answers move the served confidence?

Reads `adapters.adversarial.suffix_report` for the shipped default adapter and the zero-shot
query on the first N records of one split of the bundled graded mix (the calibration split by
default: no test-split read), and writes bench/results/adversarial_suffix.json.

    .venv/bin/python -m bench.adversarial_suffix --split calibration --limit 200
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from adapters.adversarial import suffix_report
from adapters.scoring import offline_engine
from service.calibration.records import read_graded_jsonl
from service.engine.base import LoRA
from service.serving.lifecycle import resolve_model
from service.settings import DEFAULT_ADAPTER_NAME, DEFAULT_ADAPTER_ROOT, Settings

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "adapters/graded/smollm2-135m/train_mix.jsonl"
OUT = ROOT / "bench/results/adversarial_suffix.json"


async def run(split: str, limit: int, version: str) -> dict[str, Any]:
    records = [r for r in read_graded_jsonl(RECORDS) if r.split == split][:limit]
    engine = offline_engine(resolve_model(Settings()))
    await engine.start()
    try:
        path = DEFAULT_ADAPTER_ROOT / DEFAULT_ADAPTER_NAME / version
        temperature = json.loads((path / "manifest.json").read_text())["temperature"]
        lora = LoRA(f"{DEFAULT_ADAPTER_NAME}-{version}", 1, path)
        await engine.add_lora(lora)
        return {
            "records": len(records),
            "split": split,
            "adapter": f"{DEFAULT_ADAPTER_NAME}@{version}",
            "temperature": temperature,
            "adapter_prompt": await suffix_report(engine, records, lora=lora, temperature=temperature),
            "zero_shot": await suffix_report(engine, records, lora=None),
        }
    finally:
        engine.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="calibration")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--version", default="v6")
    args = parser.parse_args()
    result = asyncio.run(run(args.split, args.limit, args.version))
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
