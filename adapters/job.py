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
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adapters.calibrate import apply_temperature
from adapters.data import GradedRecord, read_graded_jsonl
from adapters.train import SUMMARY_FILE, count_by_source, read_split, train
from adapters.train_config import QueryTrainingArguments, TrainConfig
from service.calibration.metrics import accuracy, ece, mean_confidence
from service.engine.base import LoRA

log = logging.getLogger(__name__)


@dataclass
class JobConfig:
    name: str = field(default="smollm2-135m-uncertainty", metadata={"help": "exported adapter name"})
    version: str | None = field(
        default=None,
        metadata={"help": "exported adapter version (immutable); default: the next free vN under the name"},
    )
    export_root: str = field(default="adapters/exported", metadata={"help": "adapter root the service reads"})
    mmlu: str | None = field(
        default=None, metadata={"help": "graded MMLU JSONL; its val questions join T fitting"}
    )
    base_model_name: str | None = field(default=None, metadata={"help": "manifest base-model name"})


def next_free_version(name_dir: Path) -> str:
    """v<N+1> after the highest vN under name_dir (hidden staging directories included,
    so two jobs started together do not pick the same one); v1 for a new name."""
    numbers = [
        int(match.group(1))
        for path in (name_dir.iterdir() if name_dir.is_dir() else [])
        if (match := re.fullmatch(r"\.?v(\d+)(\..*)?", path.name))
    ]
    return f"v{max(numbers, default=0) + 1}"


def target_version(job: JobConfig) -> Path:
    """The export directory this job will write, checked before any training: a taken
    version fails in seconds instead of after the run.

    Raises:
        ValueError: a bad name or version.
        FileExistsError: that version already exists (versions are immutable).
    """
    from adapters.export import check_name

    check_name("name", job.name)
    name_dir = Path(job.export_root) / job.name
    version = job.version or next_free_version(name_dir)
    check_name("version", version)
    target = name_dir / version
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose a new --version (versions are immutable)")
    return target


def calibration_records(config: TrainConfig, job: JobConfig) -> list[GradedRecord]:
    records = read_split(config, "calibration")
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
        # Kept with the version (manifest calibration_outcomes, not its metrics): the service's
        # target_error_rate thresholds rest on them until live labels arrive.
        "calibration_outcomes": {
            "split": "calibration" + (" + MMLU validation" if by_source.get("mmlu") else ""),
            "gaps": [float(v) for v in g],
            "correct": [bool(v) for v in y],
        },
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
        "split": config.split,
        "per_source": count_by_source((r.source, r.correct) for r in read_split(config, config.split)),
        # Counted by train() as it built them: reloading the QA bundle here would repeat that work.
        "every_choice_per_source": summary.get("every_choice_per_source", {}),
        "training": summary,
    }


def run_job(config: TrainConfig, args: QueryTrainingArguments, job: JobConfig) -> Path | None:
    """Train, fit T on held-out data, export; returns the exported directory.

    Under `torchrun` / `accelerate launch` every process trains; the main process then
    fits and exports alone, and the others return None.
    """
    from adapters.export import export_adapter

    if config.split != "train":
        raise ValueError(
            f"split: the job trains on the train split (got {config.split!r}); the temperature is "
            "fitted on the calibration split, which must stay unseen by training"
        )
    target = target_version(job)
    adapter_dir = train(config, args)
    if not is_main_process():
        return None
    fit = fit_served_temperature(config.model, adapter_dir, calibration_records(config, job))
    calibration_outcomes = fit.pop("calibration_outcomes")
    log.info("temperature %.3f (NLL %.4f -> %.4f)", fit["temperature"], fit["nll_before"], fit["nll_after"])
    return export_adapter(
        adapter_dir,
        out_root=job.export_root,
        name=job.name,
        version=target.name,
        base_model_dir=config.model,
        temperature=fit["temperature"],
        training_data=training_data_summary(config, adapter_dir),
        metrics={"temperature_fit": fit},
        reference_histogram=None,
        base_model_name=job.base_model_name,
        calibration_outcomes=calibration_outcomes,
    )


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed launch (torchrun sets RANK)."""
    return int(os.environ.get("RANK", "0")) == 0
