"""`confidence train`: train the LoRA, fit its temperature as served, export it.

0. Before anything is trained: the target version must be free (default: the next free
   one), the train split must hold no evaluation-only record, and there must be held-out
   calibration data.
1. `adapters.train.train` fine-tunes the LoRA on the graded records of the train split.
2. The temperature is fitted on held-out data — the calibration split plus MMLU's
   validation questions — reading the adapter through vLLM exactly as the service will.
3. `adapters.export.export_adapter` writes `<export_root>/<name>/<version>/` once, with the
   manifest (temperature, calibration-split numbers, reference histogram); `confidence
   eval` writes its report into the report directory, never into the version.

Under `torchrun` / `accelerate launch` every process trains and the main one fits and exports.

Example (the shipped default adapter's recipe is scripts/train_default_adapter):

    confidence train --train_files adapters/graded/smollm2-135m/train_mix.jsonl \\
        --mmlu adapters/graded/smollm2-135m/mmlu.jsonl --name smollm2-135m-uncertainty --version v7
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
from adapters.train import SUMMARY_FILE, count_by_source, read_split, train
from adapters.train_config import QueryTrainingArguments, TrainConfig
from service.calibration.metrics import (
    accuracy,
    auroc,
    brier,
    confidence_histogram,
    ece,
    mean_confidence,
    nan_to_none,
    nll,
)
from service.calibration.records import GradedRecord, read_records
from service.engine.base import LoRA

log = logging.getLogger(__name__)

POINT_METRICS = {"accuracy": accuracy, "ece": ece, "auroc": auroc, "brier": brier, "nll": nll}


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
    runs_root: str = field(
        default="runs",
        metadata={"help": "without --output_dir, the run goes to <runs_root>/<name>-<version>"},
    )


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
            for r in read_records([job.mmlu])
            if r.meta.get("mmlu_split") == "validation" or r.meta.get("mmlu_split") == "val"
        ]
    if not records:
        raise ValueError("no calibration records: the graded files have no 'calibration' split")
    return records


def fit_served_temperature(
    model: str, adapter_dir: Path, records: list[GradedRecord]
) -> tuple[dict[str, Any], np.ndarray]:
    """Fit T on the adapter's logit gaps as vLLM computes them (what the service serves);
    returns the fit and the served (tempered) confidences of the records."""
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
    p = apply_temperature(g, fit.temperature)
    summary = {
        **fit.to_dict(),
        "sources": dict(by_source),
        "per_source": per_source_calibration(records, p, y),
        # Kept with the version (manifest calibration_outcomes, not its metrics): the service's
        # target_error_rate thresholds rest on them until live labels arrive.
        "calibration_outcomes": {
            "split": "calibration" + (" + MMLU validation" if by_source.get("mmlu") else ""),
            "gaps": [float(v) for v in g],
            "correct": [bool(v) for v in y],
        },
    }
    return summary, p


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
    # Bad data fails here, in seconds: evaluation-only records, or nothing to fit T on.
    read_split(config, config.split, training=True)
    held_out = calibration_records(config, job)
    adapter_dir = train(config, args)
    if not is_main_process():
        return None
    leave_distributed_launch()
    fit, confidences = fit_served_temperature(config.model, adapter_dir, held_out)
    calibration_outcomes = fit.pop("calibration_outcomes")
    log.info("temperature %.3f (NLL %.4f -> %.4f)", fit["temperature"], fit["nll_before"], fit["nll_after"])
    y = np.array([float(r.correct) for r in held_out])
    return export_adapter(
        adapter_dir,
        out_root=job.export_root,
        name=job.name,
        version=target.name,
        base_model_dir=config.model,
        temperature=fit["temperature"],
        training_data=training_data_summary(config, adapter_dir),
        # The served confidences on the calibration data, whose T was fitted there (so
        # in-sample for T): the test-split numbers are `confidence eval`'s report.
        metrics={
            "temperature_fit": fit,
            "calibration_split": {"lora_prompt": calibration_summary(confidences, y)},
        },
        # Drift monitoring compares live confidences with these held-out ones.
        reference_histogram=confidence_histogram(confidences),
        base_model_name=job.base_model_name,
        calibration_outcomes=calibration_outcomes,
    )


def calibration_summary(p: np.ndarray, y: np.ndarray) -> dict[str, float | int | None]:
    """n and the point metrics the adapter listing shows per evaluation set."""
    return nan_to_none({"n": int(y.size), **{name: fn(p, y) for name, fn in POINT_METRICS.items()}})


# What torchrun / accelerate launch set for the training processes; vLLM reads some of
# them and would try to join the finished training's process group.
LAUNCH_VARIABLES = (
    "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
    "ROLE_WORLD_SIZE", "GROUP_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID",
)  # fmt: skip


def leave_distributed_launch() -> None:
    """Close the training's process group and forget the launcher's variables, so the
    temperature fit starts its own vLLM engine as a single process would."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name in LAUNCH_VARIABLES:
        os.environ.pop(name, None)


def is_main_process() -> bool:
    """True unless this is a non-zero rank of a distributed launch (torchrun sets RANK)."""
    return int(os.environ.get("RANK", "0")) == 0
