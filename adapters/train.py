"""Train an uncertainty-query LoRA adapter (Kapoor et al. 2024, "LoRA + Prompt").

Each graded record (question, proposed answer, correct?) becomes the query prompt of
`service.calibration.query.query_ids`; the adapter learns to put the next token on the "yes"
label when the answer is correct and on the "no" label otherwise (`adapters.trainer`).
The calibration split, when the data has one, is evaluated during training (ECE,
AUROC, Brier, NLL). Options: `TrainConfig` (the method) and `QueryTrainingArguments`
(the library's `TrainingArguments`).

Examples:

    python -m adapters.train \\
        --model ~/.cache/confidence-service/models/SmolLM2-135M-Instruct \\
        --train_files adapters/graded/mine.jsonl --output_dir runs/smollm2

    # smaller run, fp32, class-balanced loss, KL regularizer, early stopping
    python -m adapters.train --model MODEL_DIR --train_files a.jsonl b.jsonl \\
        --output_dir runs/try --max_steps 50 --dtype float32 --balance_classes --kl_weight 0.1 \\
        --early_stopping_patience 3

    # two processes (DDP); the global batch is per_device_train_batch_size x processes
    torchrun --nproc_per_node 2 -m adapters.train --model MODEL_DIR --train_files a.jsonl \\
        --output_dir runs/ddp --per_device_train_batch_size 4

Outputs in output_dir: `train_config.json` (the resolved config), `checkpoint-N/`
(the library's checkpoints, resumed from automatically), `adapter/` (the final PEFT
adapter plus `training_summary.json`, the input of `adapters.export`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from adapters.collator import left_pad, position_ids, tokenize_records
from adapters.train_config import QueryTrainingArguments, TrainConfig, parse_repeats
from service.calibration.query import QUERY_TEMPLATE_VERSION, LabelTokens, label_tokens, query_ids
from service.calibration.records import GradedRecord, read_records
from service.engine.cpu import cpu_has_native_bf16

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
SUMMARY_FILE = "training_summary.json"
FINAL_DIR = "adapter"


# ---------------------------------------------------------------- data


def drop_sources(records: Sequence[GradedRecord], excluded: Iterable[str]) -> list[GradedRecord]:
    """Records whose source is not excluded (records without a source are users' own: kept)."""
    skip = set(excluded)
    return [r for r in records if r.source not in skip]


def oversample(records: Sequence[GradedRecord], repeats: dict[str, int]) -> list[GradedRecord]:
    """Each record repeated by its source's factor (1 when not listed); order kept."""
    return [r for r in records for _ in range(repeats.get(str(r.source), 1))]


def count_by_source(pairs: Iterable[tuple[str | None, bool]]) -> dict[str, dict[str, int]]:
    """{source: {"n", "correct"}} from (source, correct) pairs; no source counts as "user"."""
    per_source: dict[str, dict[str, int]] = {}
    for source, correct in pairs:
        entry = per_source.setdefault(source or "user", {"n": 0, "correct": 0})
        entry["n"] += 1
        entry["correct"] += int(correct)
    return per_source


def every_choice_training_records(config: TrainConfig) -> list[GradedRecord]:
    """The every_choice records of config (see TrainConfig.every_choice), sources in order.

    Raises:
        EvaluationOnlyError: an evaluation-only source (MMLU) was named.
        ValueError: a source that is not multiple choice or not known.
    """
    from adapters.data import EVAL_LOADERS, LOADERS, EvaluationOnlyError, every_choice_records, load_source

    root = Path(config.data_dir) if config.data_dir else None
    records: list[GradedRecord] = []
    for name, limit in parse_repeats(config.every_choice, option="every_choice").items():
        if name in EVAL_LOADERS:
            raise EvaluationOnlyError(f"every_choice: {name!r} is evaluation-only, never training data")
        if name not in LOADERS:
            raise ValueError(f"every_choice: unknown source {name!r}; known: {sorted(LOADERS)}")
        items = load_source(name, root, limit=limit)
        if any(item.kind != "mc" for item in items):
            raise ValueError(f"every_choice: {name!r} is not a multiple-choice source")
        records += every_choice_records(items)
    return records


def read_split(config: TrainConfig, split: str | None, *, training: bool = False) -> list[GradedRecord]:
    """One split of the training files (records without one get the hash split), without
    the excluded sources; `training` refuses evaluation-only (MMLU) records."""
    return read_records(
        config.train_files,
        split=split,  # type: ignore[arg-type]  # TrainConfig.__post_init__ checks it
        training=training,
        exclude_sources=config.exclude_sources,
    )


def training_records(config: TrainConfig) -> tuple[list[GradedRecord], list[GradedRecord]]:
    """(records to train on, of them the every-choice ones), oversampled as configured."""
    records = oversample(read_split(config, config.split, training=True), parse_repeats(config.repeat))
    choice_records = drop_sources(every_choice_training_records(config), config.exclude_sources)
    if choice_records:
        log.info("%d every-choice records from %s", len(choice_records), config.every_choice)
    return records + choice_records, choice_records


# ---------------------------------------------------------------- model


def resolve_dtype(name: str) -> Literal["bfloat16", "float32"]:
    """The concrete dtype for `auto`: bf16 on a GPU that has it, or on a CPU that computes it
    natively. Measured on an AVX2-only CPU, a bf16 training step of SmolLM2-135M took
    ~220 s against ~45 s in float32, because bf16 matmuls are emulated there."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    if name not in ("bfloat16", "float32"):
        raise ValueError(f"dtype: expected auto, bfloat16 or float32, got {name!r}")
    return "float32" if name == "float32" else "bfloat16"


def load_base(model_dir: str | Path, dtype: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch_dtype = {"bfloat16": torch.bfloat16, "float32": torch.float32}[resolve_dtype(dtype)]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype)
    return model, tokenizer


def build_peft_model(base: Any, config: TrainConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    layers = None
    if config.top_layers is not None:
        n_layers = int(base.config.num_hidden_layers)
        layers = list(range(max(n_layers - config.top_layers, 0), n_layers))
    lora = LoraConfig(
        layers_to_transform=layers,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # autocast_adapter_dtype (the default) keeps the LoRA weights in float32 on a bf16
    # base, so the optimizer does not lose small updates to bf16 rounding.
    return get_peft_model(base, lora)


# ---------------------------------------------------------------- training


def prepare_arguments(config: TrainConfig, args: QueryTrainingArguments, *, has_eval: bool) -> None:
    """Fit the library's arguments to the data and hardware: no evaluation without a
    calibration split, best-checkpoint selection with early stopping, bf16 autocast on a
    GPU that computes it."""
    import torch

    if not has_eval:
        if config.early_stopping_patience:
            raise ValueError("early_stopping_patience: the training files have no calibration split")
        args.eval_strategy = "no"
    if config.early_stopping_patience:
        args.load_best_model_at_end = True
        args.metric_for_best_model = args.metric_for_best_model or "loss"
        args.greater_is_better = not args.metric_for_best_model.endswith("loss")
    if resolve_dtype(config.dtype) == "bfloat16" and torch.cuda.is_available() and not args.fp16:
        args.bf16 = True


def write_summary(path: Path, config: TrainConfig, summary: dict[str, Any]) -> None:
    from service.lora.manifest import weights_fingerprint

    full = {
        "template_version": QUERY_TEMPLATE_VERSION,
        "base_model": {
            "name": Path(config.model).name,
            "weights_sha256": weights_fingerprint(Path(config.model)),
        },
        "train_files": [str(p) for p in config.train_files],
        "split": config.split,
        "repeat": parse_repeats(config.repeat),
        "exclude_sources": sorted(config.exclude_sources),
        "every_choice": parse_repeats(config.every_choice, option="every_choice"),
        **summary,
    }
    path.write_text(json.dumps(full, indent=2) + "\n")


def loss_history(log_history: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(training log, evaluation log) from the Trainer's log history."""
    train_keys = ("step", "loss", "label_loss", "kl", "learning_rate", "grad_norm")
    history = [{k: e[k] for k in train_keys if k in e} for e in log_history if "loss" in e]
    evaluations = [e for e in log_history if "eval_loss" in e]
    return history, evaluations


def train(config: TrainConfig, args: QueryTrainingArguments) -> Path:
    """Fine-tune a LoRA adapter on the uncertainty query; returns the final adapter dir.

    Resumes from the latest checkpoint in args.output_dir when config.resume is set.
    Under `torchrun` / `accelerate launch` every process calls this; only the main one writes.

    Raises:
        ValueError: no usable training examples (none in the split, or all too long).
        EvaluationOnlyError: evaluation-only (MMLU) records in the training data.
    """
    import torch
    from transformers import EarlyStoppingCallback, set_seed
    from transformers.trainer_utils import get_last_checkpoint

    from adapters.collator import collate
    from adapters.trainer import QueryTrainer, calibration_metrics, class_weights

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    config = dataclasses.replace(config, dtype=resolve_dtype(config.dtype))
    if not args.output_dir:
        raise ValueError("output_dir: required")
    output_dir = Path(args.output_dir)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available() and not args.use_cpu:
        # Without it accelerate sees no distributed CPU run and each process trains alone.
        args = dataclasses.replace(args, use_cpu=True)
    # Data first: a bad file or evaluation-only records fail before the model is loaded.
    records, choice_records = training_records(config)
    set_seed(args.seed)
    base, tokenizer = load_base(config.model, config.dtype)
    tokens = label_tokens(tokenizer)
    examples, skipped = tokenize_records(tokenizer, records, max_len=config.max_len)
    if not examples:
        raise ValueError(
            f"no training examples: {len(records)} records in split {config.split!r}, {skipped} too long"
        )
    held_out, _ = tokenize_records(tokenizer, read_split(config, "calibration"), max_len=config.max_len)
    labels = [e.label for e in examples]
    n_yes = sum(labels)
    log.info(
        "%d examples (%d correct, %.1f%%), %d skipped as longer than %d tokens; %d calibration examples",
        len(examples), n_yes, 100 * n_yes / len(examples), skipped, config.max_len, len(held_out),
    )  # fmt: skip
    prepare_arguments(config, args, has_eval=bool(held_out))
    model = build_peft_model(base, config)
    trainer = QueryTrainer(
        model=model,
        args=args,
        train_dataset=examples,
        eval_dataset=held_out or None,
        data_collator=collate,
        compute_metrics=calibration_metrics,
        callbacks=(
            [EarlyStoppingCallback(config.early_stopping_patience)] if config.early_stopping_patience else []
        ),
        tokens=tokens,
        kl_weight=config.kl_weight,
        kl_type=config.kl_type,
        weights=class_weights(labels) if config.balance_classes else (1.0, 1.0),
    )
    if trainer.is_world_process_zero():
        output_dir.mkdir(parents=True, exist_ok=True)
        resolved = {"method": dataclasses.asdict(config), "training_arguments": args.to_dict()}
        (output_dir / CONFIG_FILE).write_text(json.dumps(resolved, indent=2, default=str) + "\n")
    checkpoint = get_last_checkpoint(str(output_dir)) if config.resume and output_dir.is_dir() else None
    if checkpoint:
        log.info("resuming from %s", checkpoint)
    trainer.train(resume_from_checkpoint=checkpoint)

    final = output_dir / FINAL_DIR
    if trainer.is_world_process_zero():
        shutil.rmtree(final, ignore_errors=True)
    trainer.save_model(str(final))
    if trainer.is_world_process_zero():
        history, evaluations = loss_history(trainer.state.log_history)
        write_summary(final / SUMMARY_FILE, config, {
            "label_token_ids": {"no": tokens.no_id, "yes": tokens.yes_id},
            "examples": len(examples),
            "every_choice_per_source": count_by_source((r.source, r.correct) for r in choice_records),
            "correct": n_yes,
            "incorrect": len(examples) - n_yes,
            "skipped_too_long": skipped,
            "calibration_examples": len(held_out),
            "steps": trainer.state.global_step,
            "best_checkpoint": trainer.state.best_model_checkpoint,
            "history": history,
            "evaluations": evaluations,
        })  # fmt: skip
        log.info("saved adapter to %s", final)
    trainer.accelerator.wait_for_everyone()
    return final


# ---------------------------------------------------------------- cross-check


def _as_record(record: GradedRecord | Mapping[str, Any]) -> GradedRecord:
    if isinstance(record, GradedRecord):
        return record
    return GradedRecord(question=str(record["question"]), answer=str(record["answer"]), correct=False)


def label_logit_gaps(
    model: str | Path | Any,
    adapter_dir: str | Path | None,
    records: Sequence[GradedRecord | Mapping[str, Any]],
    *,
    batch_size: int = 8,
    tokenizer: Any = None,
    dtype: Literal["bfloat16", "float32"] = "float32",
) -> np.ndarray:
    """logit(yes) - logit(no) of the query prompt for each record, with transformers.

    model is a model directory or an already loaded model (then pass tokenizer, or it
    is loaded from the model's name_or_path); adapter_dir, if given, is applied on
    top with peft. Records need a question and an answer. The service computes the
    same gap with vLLM; this is the cross-check.
    """
    import torch
    from transformers import AutoTokenizer

    from adapters.collator import question_messages
    from adapters.trainer import label_logits_of

    if isinstance(model, (str, Path)):
        model, loaded_tokenizer = load_base(model, dtype)
        tokenizer = tokenizer or loaded_tokenizer
    elif tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model.config.name_or_path)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    tokens: LabelTokens = label_tokens(tokenizer)
    typed = [_as_record(r) for r in records]
    prompts = [query_ids(tokenizer, question_messages(r), r.answer) for r in typed]
    was_training = model.training
    model.eval()
    gaps = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            ids, mask = left_pad(prompts[start : start + batch_size])
            # Wherever the model lives (the GPU in the benchmark's baseline).
            batch = {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids(mask)}
            batch = {k: v.to(model.device) for k, v in batch.items()}
            label_logits, _ = label_logits_of(model, batch, tokens)
            gaps.append((label_logits[:, 1] - label_logits[:, 0]).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(gaps) if gaps else np.zeros(0, dtype=np.float32)


def main(argv: Sequence[str] | None = None) -> None:
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # HfArgumentParser's stub wants its own DataClassType protocol; any dataclass works.
    parser = HfArgumentParser((TrainConfig, QueryTrainingArguments))  # type: ignore[arg-type]
    config, args = parser.parse_args_into_dataclasses(args=argv)
    print(train(config, args))


if __name__ == "__main__":
    main()
