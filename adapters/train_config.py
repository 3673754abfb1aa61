"""Configuration of the training job: the method's own options and the library's.

`TrainConfig` holds what is specific to LoRA + Prompt (data, LoRA shape, the KL term,
source mixing). Everything a `transformers.Trainer` already knows how to do — batch
size, schedule, checkpoints, evaluation, logging, mixed precision, DDP/FSDP — is set
through `QueryTrainingArguments`, the library's `TrainingArguments` with this
project's defaults, so every Trainer option works on the command line as documented
by transformers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from transformers import IntervalStrategy, SchedulerType, TrainingArguments

from service.calibration.records import SPLITS


def parse_repeats(specs: Sequence[str], *, option: str = "repeat") -> dict[str, int]:
    """{"arc_easy": 3} from ["arc_easy=3"]; ValueError names the option and the bad spec."""
    repeats = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"{option}: expected SOURCE=N with N >= 1, got {spec!r}")
        repeats[name.strip()] = int(value)
    return repeats


@dataclass
class TrainConfig:
    model: str = field(metadata={"help": "Local Hugging Face model directory of the served base model."})
    train_files: list[str] = field(metadata={"help": "Graded JSONL files (one record per line)."})
    split: str | None = field(
        default="train",
        metadata={
            "help": "Train on the records of this split (records without one get the hash split); "
            "'all' uses every record except evaluation-only ones."
        },
    )
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (the service's max_lora_rank must be >=)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the LoRA input."})
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "v_proj"],
        metadata={"help": "Linear layers that get adapters; vLLM must support LoRA on them."},
    )
    top_layers: int | None = field(
        default=None,
        metadata={
            "help": "Adapt only the last N transformer layers (None = all). Backpropagation then "
            "stops at the lowest adapted layer: on a CPU this cuts a step's cost by about the "
            "fraction of layers left out of the backward pass."
        },
    )
    max_len: int = field(
        default=256,
        metadata={"help": "Longer query prompts are skipped (and counted), never truncated."},
    )
    dtype: Literal["auto", "bfloat16", "float32"] = field(
        default="auto",
        metadata={
            "help": "Base model dtype; the LoRA weights stay float32. auto: bfloat16 on a GPU that "
            "supports it or a CPU that computes it natively (AVX512-BF16/AMX), else float32 "
            "(bf16 is emulated on other CPUs and ~5x slower)."
        },
    )
    resume: bool = field(
        default=True, metadata={"help": "Continue from the latest checkpoint in output_dir."}
    )
    balance_classes: bool = field(
        default=False,
        metadata={"help": "Reweight the loss so correct and incorrect answers weigh the same in total."},
    )
    kl_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of the divergence from the base model's next-token distribution."},
    )
    kl_type: Literal["kl", "jsd"] = field(
        default="kl", metadata={"help": "kl: KL(base || adapted); jsd: Jensen-Shannon divergence."}
    )
    early_stopping_patience: int | None = field(
        default=None,
        metadata={
            "help": "Stop when the calibration-split metric_for_best_model has not improved for N "
            "evaluations, and keep the best checkpoint (needs a calibration split)."
        },
    )
    num_threads: int | None = field(default=None, metadata={"help": "torch CPU threads; None keeps torch's."})
    repeat: list[str] = field(
        default_factory=list,
        metadata={
            "help": "SOURCE=N: repeat that source's training records N times. A rare kind of "
            "question (e.g. multiple choice among mostly open-ended data) otherwise barely moves "
            "the adapter, which then misjudges that kind's base rate."
        },
    )
    exclude_sources: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Sources left out of training (and of the temperature fit). A format whose "
            "base rate differs from the target's (two-choice sets sit near 50%% for a model at "
            "chance, four-choice MMLU near 25%%) otherwise teaches spurious per-format confidence."
        },
    )
    every_choice: list[str] = field(
        default_factory=list,
        metadata={
            "help": "SOURCE=N: also train on every choice of the bundled multiple-choice questions "
            "of SOURCE (of N sampled, those in the train split), each graded by the gold label: "
            "k pairs per question, exactly one correct. Teaches a model that answers at chance "
            "that confidence must not vary with how a question reads (MMLU-style calibration)."
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Extracted QA bundle for every_choice; None: the default cache."}
    )

    def __post_init__(self) -> None:
        if self.split in ("all", "None", ""):  # the command line cannot pass None itself
            self.split = None
        if self.split not in (None, *SPLITS):
            raise ValueError(f"split: expected one of {SPLITS} or 'all', got {self.split!r}")
        if not self.train_files:
            raise ValueError("train_files: need at least one JSONL file")
        positive = {"lora_r": self.lora_r, "lora_alpha": self.lora_alpha, "max_len": self.max_len}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name}: must be positive, got {value}")
        for name in ("top_layers", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name}: must be positive, got {value}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        if self.kl_weight < 0:
            raise ValueError(f"kl_weight: must be >= 0, got {self.kl_weight}")
        if not self.target_modules:
            raise ValueError("target_modules: need at least one module name")
        parse_repeats(self.repeat)
        parse_repeats(self.every_choice, option="every_choice")


@dataclass
class QueryTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the defaults this job was tuned with (the hand-written loop's).

    Only defaults change; every option keeps the library's name and meaning.
    """

    output_dir: str | None = field(
        default=None, metadata={"help": "Where checkpoints, the config and the final adapter go."}
    )
    per_device_train_batch_size: int = field(
        default=8, metadata={"help": "Examples per forward pass on each device."}
    )
    per_device_eval_batch_size: int = field(
        default=16, metadata={"help": "Calibration-split examples per forward pass."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate."})
    lr_scheduler_type: SchedulerType | str = field(
        default="cosine", metadata={"help": "Decay after the linear warmup."}
    )
    warmup_steps: float = field(default=10, metadata={"help": "Linear warmup steps before the cosine decay."})
    max_steps: int = field(
        default=300, metadata={"help": "Optimizer steps; -1 trains num_train_epochs instead."}
    )
    seed: int = field(default=0, metadata={"help": "Seed for adapter init, dropout and data order."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm; 0 disables."})
    logging_steps: float = field(default=1, metadata={"help": "Log the loss every N optimizer steps."})
    save_steps: float = field(default=100, metadata={"help": "Save a resumable checkpoint every N steps."})
    eval_strategy: IntervalStrategy | str = field(
        default="steps", metadata={"help": "Evaluate on the calibration split ('no' to skip)."}
    )
    eval_steps: float | None = field(default=50, metadata={"help": "Evaluate every N steps."})
    # The collator needs the examples' own fields; the library would drop the fields that
    # the model's forward does not name.
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep every example field for the collator."}
    )
    label_names: list[str] | None = field(
        default_factory=lambda: ["labels"], metadata={"help": "The correctness label key of a batch."}
    )
    # Every LoRA weight is used in every forward pass; searching for unused ones costs a graph walk a step.
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "See torch DistributedDataParallel."}
    )
    gradient_checkpointing_kwargs: dict[str, Any] | str | None = field(
        default_factory=lambda: {"use_reentrant": False},
        metadata={"help": "Non-reentrant checkpointing works with frozen inputs (LoRA on a frozen base)."},
    )
