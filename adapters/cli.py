"""The training job's commands: `confidence label|train|eval|recalibrate`.

They plug into the service's `confidence` command line through the `confidence.commands`
entry-point group (pyproject.toml), so the service never imports the training job and a
serving-only install works without its packages. Each command takes its raw arguments:
its options belong to the job's own dataclass parsers (`confidence train --help`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import cast


def _dataclass_args(types: tuple[type, ...], argv: list[str]) -> tuple[object, ...]:
    from transformers import HfArgumentParser

    parser = HfArgumentParser(types)  # type: ignore[arg-type]
    return tuple(parser.parse_args_into_dataclasses(args=argv))


def label(argv: list[str]) -> int:
    """generate and grade the base model's answers (training data)"""
    from adapters.labelling import main as label_main

    return label_main(argv)


def train(argv: list[str]) -> int:
    """train, calibrate and export an uncertainty adapter"""
    from adapters.job import JobConfig, run_job, target_version
    from adapters.labelling import resolve_model
    from adapters.train_config import QueryTrainingArguments, TrainConfig

    if "--model" not in argv:  # default: the embedded model, fetched if needed
        argv = ["--model", resolve_model(None), *argv]
    parsed = _dataclass_args((TrainConfig, QueryTrainingArguments, JobConfig), argv)
    config, args, job = cast(tuple[TrainConfig, QueryTrainingArguments, JobConfig], parsed)
    if "--output_dir" not in argv:
        # One run directory per target version: rerunning an interrupted job (whose version
        # is still free) resumes it, and a new version never resumes an old run.
        run_dir = Path(job.runs_root) / f"{job.name}-{target_version(job).name}"
        args = dataclasses.replace(args, output_dir=str(run_dir))
    exported = run_job(config, args, job)
    if exported is not None:  # None: a secondary process of a distributed launch
        print(exported)
    return 0


def evaluate(argv: list[str]) -> int:
    """evaluate an exported adapter against the baselines; write its report"""
    from adapters.evaluate import EvalConfig
    from adapters.evaluate import evaluate as run_eval

    (config,) = _dataclass_args((EvalConfig,), argv)
    report = run_eval(config)  # type: ignore[arg-type]
    print(json.dumps({k: list(v) for k, v in report["eval_sets"].items()}))
    return 0


def recalibrate(argv: list[str]) -> int:
    """refit a served version's temperature on live labels; promote it only if better"""
    from adapters.recalibrate import main as recalibrate_main

    return recalibrate_main(argv)
