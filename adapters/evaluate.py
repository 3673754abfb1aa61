"""Evaluate an exported uncertainty adapter against the paper's baselines.

On held-out questions and the base model's own answers: LoRA + Prompt (the adapter,
temperature-scaled, as served), the zero-shot classifier (same query, no adapter),
verbalized confidence and sampling self-consistency — all on the same items. Writes
report.json / report.md / reliability.png, metrics.json (the point estimates) and
predictions.jsonl into the report directory; the adapter's version directory is never
rewritten (its reference histogram comes from the training job's calibration split).

Example:

    confidence eval --adapter adapters/exported/smollm2-135m-uncertainty/v6 \\
        --graded adapters/graded/smollm2-135m/train_mix.jsonl --mmlu adapters/graded/smollm2-135m/mmlu.jsonl
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adapters.calibrate import apply_temperature
from adapters.data import GradedRecord, stable_seed
from adapters.report import write_report
from service.calibration.metrics import nan_to_none
from service.calibration.records import read_records
from service.engine.base import Engine, LoRA
from service.lora.manifest import AdapterManifest

log = logging.getLogger(__name__)

OPEN_KINDS = ("open", "numeric")
HEADLINE = ("accuracy", "ece", "auroc", "brier", "nll")


@dataclass
class EvalConfig:
    adapter: Path = field(metadata={"help": "exported adapter directory (PEFT files + manifest.json)"})
    graded: list[Path] = field(
        default_factory=list, metadata={"help": "graded JSONL; its test split is used"}
    )
    mmlu: Path | None = field(default=None, metadata={"help": "graded MMLU JSONL (test questions are used)"})
    report_dir: Path | None = field(
        default=None, metadata={"help": "default: adapters/reports/<name>/<version>"}
    )
    model: str | None = field(default=None, metadata={"help": "base model; unset = the embedded model"})
    max_per_set: int | None = field(
        default=None, metadata={"help": "deterministic subsample of each open-ended / other MC eval set"}
    )
    max_mmlu: int | None = field(
        default=None,
        metadata={"help": "subsample of MMLU test; unset = all (ECE's noise floor shrinks with n)"},
    )
    self_consistency_k: int = field(default=5, metadata={"help": "samples for the self-consistency baseline"})
    baselines: bool = field(default=True, metadata={"help": "also run verbalized and self-consistency"})
    n_boot: int = 1000
    seed: int = 0


def subsample(records: list[GradedRecord], limit: int | None, seed: int) -> list[GradedRecord]:
    if limit is None or len(records) <= limit:
        return records
    return sorted(records, key=lambda r: stable_seed(seed, r.id))[:limit]


def eval_sets(config: EvalConfig) -> dict[str, list[GradedRecord]]:
    """Held-out sets: MMLU test; open-ended test splits (together and per source); other MC tests."""
    sets: dict[str, list[GradedRecord]] = {}
    if config.mmlu is not None:
        mmlu = [r for r in read_records([config.mmlu]) if r.meta.get("mmlu_split", r.split) == "test"]
        sets["mmlu_test"] = subsample(mmlu, config.max_mmlu, config.seed)
    test = read_records(config.graded, split="test")
    open_ended = subsample([r for r in test if r.kind in OPEN_KINDS], config.max_per_set, config.seed)
    if open_ended:
        sets["open_ended_test"] = open_ended
        # Per-source views of the same items, so every number in the report comes from one pool.
        for source in sorted({r.source or "user" for r in open_ended}):
            sets[f"{source}_test"] = [r for r in open_ended if (r.source or "user") == source]
    mc = subsample([r for r in test if r.kind == "mc"], config.max_per_set, config.seed)
    if mc:
        sets["mc_test"] = mc
    # Users' own records (README format) carry no kind; they are evaluated as one set.
    own = subsample([r for r in test if r.kind is None], config.max_per_set, config.seed)
    if own:
        sets["own_test"] = own
    return {name: recs for name, recs in sets.items() if recs}


async def method_confidences(
    engine: Engine, records: Sequence[GradedRecord], lora: LoRA, temperature: float, config: EvalConfig
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    from adapters import scoring

    methods = {
        "lora_prompt": apply_temperature(await scoring.query_gaps(engine, records, lora), temperature),
        "zero_shot": apply_temperature(await scoring.query_gaps(engine, records, None), 1.0),
    }
    extra: dict[str, Any] = {}
    if config.baselines:
        methods["verbalized"], extra["verbalized_parse_rate"] = await scoring.verbalized(engine, records)
        methods["self_consistency"] = await scoring.self_consistency(
            engine, records, k=config.self_consistency_k, seed=config.seed
        )
    return methods, extra


PREDICTIONS_NAME = "predictions.jsonl"
METRICS_NAME = "metrics.json"


def write_predictions(
    path: Path, records: Sequence[GradedRecord], confidences: dict[str, np.ndarray]
) -> None:
    """One line per held-out item with every method's confidence: lets anyone recompute
    the report's numbers, slice them differently, or refit a calibrator offline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        for i, r in enumerate(records):
            row: dict[str, Any] = {"id": r.id, "source": r.source, "kind": r.kind, "correct": r.correct}
            row |= {method: float(values[i]) for method, values in confidences.items()}
            handle.write(json.dumps(row) + "\n")


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """Per eval set and method: the point estimates (metrics.json of the report)."""
    out: dict[str, Any] = {}
    for set_name, methods in report["eval_sets"].items():
        out[set_name] = {
            method: {"n": summary["n"], **{m: summary[m]["value"] for m in HEADLINE}}
            for method, summary in methods.items()
        }
    return out


async def evaluate_async(config: EvalConfig, engine: Engine) -> dict[str, Any]:
    manifest = AdapterManifest.read(config.adapter)
    lora = LoRA(name=manifest.name, int_id=1, path=config.adapter)
    sets = eval_sets(config)
    unique = list({r.id: r for recs in sets.values() for r in recs}.values())
    log.info(
        "evaluating %s/%s on %d items: %s",
        manifest.name,
        manifest.version,
        len(unique),
        {k: len(v) for k, v in sets.items()},
    )
    confidences, extra = await method_confidences(engine, unique, lora, manifest.temperature, config)
    index = {r.id: i for i, r in enumerate(unique)}
    results: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    for set_name, recs in sets.items():
        rows = np.array([index[r.id] for r in recs])
        labels = np.array([float(r.correct) for r in recs])
        results[set_name] = {method: (values[rows], labels) for method, values in confidences.items()}
    report_dir = config.report_dir or Path("adapters/reports") / manifest.name / manifest.version
    metadata = {
        "adapter": f"{manifest.name}/{manifest.version}",
        "base_model": manifest.base_model.name,
        "temperature": manifest.temperature,
        "template_version": manifest.template_version,
        "self_consistency_k": config.self_consistency_k,
        **extra,
    }
    report = write_report(
        results, report_dir, metadata=nan_to_none(metadata), n_boot=config.n_boot, seed=config.seed
    )
    # The version directory is written once, by the export: the evaluation's numbers live
    # in the report directory (report.json in full, metrics.json as point estimates).
    (report_dir / METRICS_NAME).write_text(json.dumps(nan_to_none(headline(report)), indent=2) + "\n")
    write_predictions(report_dir / PREDICTIONS_NAME, unique, confidences)
    log.info("report written to %s", report_dir)
    return report


def evaluate(config: EvalConfig) -> dict[str, Any]:
    """Run the evaluation with a fresh vLLM engine; returns the report dict."""
    from adapters.labelling import resolve_model
    from adapters.scoring import offline_engine

    async def run() -> dict[str, Any]:
        engine = offline_engine(resolve_model(config.model))
        await engine.start()
        try:
            return await evaluate_async(config, engine)
        finally:
            engine.shutdown()

    return asyncio.run(run())
