"""`confidence train`: train the LoRA, fit its temperature as served, export it.

1. `adapters.train.train` fine-tunes the LoRA on the graded records of the train split.
2. The temperature is fitted on held-out data — the calibration split plus MMLU's
   validation questions — reading the adapter through vLLM exactly as the service will.
3. `adapters.export.export_adapter` writes `<export_root>/<name>/<version>/` with the
   manifest; `confidence eval` then adds the report and the reference histogram.

Example (reproduces the shipped default adapter; see README):

    confidence train --train_files data/graded/train_mix.jsonl --mmlu data/graded/mmlu.jsonl \\
        --output_dir runs/smollm2 --name smollm2-135m-uncertainty --version v1
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adapters.calibrate import apply_temperature
from adapters.data import GradedRecord, read_graded_jsonl
from adapters.train import SUMMARY_FILE, TrainConfig, count_by_source, train
from service.calibration.metrics import accuracy, ece, mean_confidence
from service.engine.base import LoRA

log = logging.getLogger(__name__)


@dataclass
class JobConfig:
    name: str = field(default="smollm2-135m-uncertainty", metadata={"help": "exported adapter name"})
    version: str = field(default="v1", metadata={"help": "exported adapter version (immutable)"})
    export_root: str = field(default="adapters/exported", metadata={"help": "adapter root the service reads"})
    mmlu: str | None = field(
        default=None, metadata={"help": "graded MMLU JSONL; its val questions join T fitting"}
    )
    base_model_name: str | None = field(default=None, metadata={"help": "manifest base-model name"})


def split_records(config: TrainConfig, split: str) -> list[GradedRecord]:
    """One split of the training files, without the sources training leaves out."""
    excluded = set(config.exclude_sources)
    return [
        r
        for path in config.train_files
        for r in read_graded_jsonl(Path(path))
        if r.split == split and r.source not in excluded
    ]


def calibration_records(config: TrainConfig, job: JobConfig) -> list[GradedRecord]:
    records = split_records(config, "calibration")
    if job.mmlu:
        records += [
            r
            for r in read_graded_jsonl(Path(job.mmlu))
            if r.meta.get("mmlu_split") == "validation" or r.meta.get("mmlu_split") == "val"
        ]
    if not records:
        raise ValueError("no calibration records: the graded files have no 'calibration' split")
    return records


def fit_served_temperature(model: str, adapter_dir: Path, records: list[GradedRecord]) -> dict[str, Any]:
    """Fit T on the adapter's logit gaps as vLLM computes them (what the service serves)."""
    from adapters.calibrate import fit_temperature
    from adapters.scoring import offline_engine, query_gaps

    async def gaps() -> np.ndarray:
        engine = offline_engine(model)
        await engine.start()
        try:
            return await query_gaps(engine, records, LoRA("candidate", 1, adapter_dir))
        finally:
            engine.shutdown()

    g = asyncio.run(gaps())
    y = np.array([float(r.correct) for r in records])
    fit = fit_temperature(g, y)
    by_source = Counter(r.source for r in records)
    return {
        **fit.to_dict(),
        "sources": dict(by_source),
        "per_source": per_source_calibration(records, apply_temperature(g, fit.temperature), y),
    }


def per_source_calibration(records: list[GradedRecord], p: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Per source of the fitting data: n, accuracy, mean confidence and ECE after T.

    One T serves every source; this shows, before the full evaluation, where it falls
    short (e.g. MMLU validation against the open-ended calibration split)."""
    out: dict[str, Any] = {}
    sources = np.array([r.source or "user" for r in records])
    for source in sorted(set(sources.tolist())):
        rows = sources == source
        out[source] = {
            "n": int(rows.sum()),
            "accuracy": accuracy(p[rows], y[rows]),
            "mean_confidence": mean_confidence(p[rows], y[rows]),
            "ece": ece(p[rows], y[rows]),
        }
        log.info("calibration %-16s %s", source, out[source])
    return out


def training_data_summary(config: TrainConfig, adapter_dir: Path) -> dict[str, Any]:
    summary_path = adapter_dir / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    return {
        "files": [Path(p).name for p in config.train_files],
        "split": "train",
        "per_source": count_by_source((r.source, r.correct) for r in split_records(config, "train")),
        # Counted by train() as it built them: reloading the QA bundle here would repeat that work.
        "every_choice_per_source": summary.get("every_choice_per_source", {}),
        "training": summary,
    }


def run_job(config: TrainConfig, job: JobConfig) -> Path:
    from adapters.export import export_adapter

    adapter_dir = train(config)
    fit = fit_served_temperature(config.model, adapter_dir, calibration_records(config, job))
    log.info("temperature %.3f (NLL %.4f -> %.4f)", fit["temperature"], fit["nll_before"], fit["nll_after"])
    return export_adapter(
        adapter_dir,
        out_root=job.export_root,
        name=job.name,
        version=job.version,
        base_model_dir=config.model,
        temperature=fit["temperature"],
        training_data=training_data_summary(config, adapter_dir),
        metrics={"temperature_fit": fit},
        reference_histogram=None,
        base_model_name=job.base_model_name,
    )
