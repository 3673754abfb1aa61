"""Read every confidence signal of the held-out record sets once (the engine-heavy step).

Writes ``<out>/<set>.jsonl`` (see `adapters.features.signals`) for the calibration
split, the test split, the out-of-domain set (COPA) and the untouched out-of-domain set
(SST-2, `adapters.heldout`); fitting and reporting read these files.

Example:

    python -m adapters.signals_job --adapter adapters/exported/smollm2-135m-uncertainty/v6 \\
        --graded adapters/graded/smollm2-135m/train_mix.jsonl \\
        --graded adapters/graded/smollm2-135m/mmlu.jsonl --out runs/signals/v6
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

from adapters import features, heldout
from adapters.data import GradedRecord, Split, stable_seed
from service.engine.base import LoRA
from service.lora.manifest import AdapterManifest

log = logging.getLogger(__name__)
SETS = ("calibration", "test", "ood", "untouched")


def record_set(
    name: str, graded: Sequence[Path], per_source: int, max_mmlu: int | None = None
) -> list[GradedRecord]:
    if name == "ood":
        return heldout.ood_records()
    if name == "untouched":
        return heldout.untouched_records()
    labelled = [p for p in graded if "mmlu" not in p.name]
    mmlu = heldout.labelled_records([p for p in graded if "mmlu" in p.name], name, group="mmlu")
    if max_mmlu is not None:
        mmlu = sorted(mmlu, key=lambda r: stable_seed(0, r.id))[:max_mmlu]
    split: Split = "test" if name == "test" else "calibration"
    return [
        *heldout.labelled_records(labelled, name, group="labelled"),
        *mmlu,
        *heldout.no_choice_records(split, per_source=per_source),
    ]


async def run(
    adapter: Path,
    graded: Sequence[Path],
    out: Path,
    sets: Sequence[str],
    per_source: int,
    max_mmlu: int | None,
) -> None:
    from adapters.labelling import resolve_model
    from adapters.scoring import offline_engine

    manifest = AdapterManifest.read(adapter)
    lora = LoRA(name=manifest.name, int_id=1, path=adapter)
    engine = offline_engine(resolve_model(None))
    await engine.start()
    try:
        for name in sets:
            records = record_set(name, graded, per_source, max_mmlu)
            log.info("%s: %d records", name, len(records))
            features.write_rows(out / f"{name}.jsonl", await features.signals(engine, records, lora))
    finally:
        engine.shutdown()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--adapter", type=Path, required=True)
    parser.add_argument("--graded", type=Path, action="append", default=[])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument(
        "--per-source", type=int, default=100, help="no-choice questions per source and split"
    )
    parser.add_argument("--max-mmlu", type=int, default=None, help="deterministic MMLU subsample per set")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sets = [s for s in args.sets.split(",") if s]
    asyncio.run(run(args.adapter, args.graded, args.out, sets, args.per_source, args.max_mmlu))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
