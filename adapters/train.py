"""Train an uncertainty-query LoRA adapter (Kapoor et al. 2024, "LoRA + Prompt").

Each graded record (question, proposed answer, correct?) becomes the query prompt of
`service.calibration.query.query_ids`; the adapter learns to put the next token on the "yes"
label when the answer is correct and on the "no" label otherwise. The loss is the
cross-entropy over just those two logits, i.e. exactly the binary classifier the
service reads. An optional KL/JSD term keeps the adapted model's next-token
distribution over the question and answer close to the base model's.

Examples:

    python -m adapters.train \\
        --model ~/.cache/confidence-service/models/SmolLM2-135M-Instruct \\
        --train_files data/graded.jsonl --output_dir runs/smollm2

    # smaller run, fp32, class-balanced loss, KL regularizer
    python -m adapters.train --model MODEL_DIR --train_files a.jsonl b.jsonl \\
        --output_dir runs/try --max_steps 50 --dtype float32 --balance_classes --kl_weight 0.1

Outputs in output_dir: `train_config.json` (the resolved config), `checkpoint-N/`
(adapter + optimizer state, resumed from automatically), `adapter/` (the final PEFT
adapter plus `training_summary.json`, the input of `adapters.export`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import re
import shutil
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from service.calibration.query import (
    QUERY_TEMPLATE_VERSION,
    LabelTokens,
    encode_rendered,
    label_tokens,
    query_ids,
    question_chat,
    render,
)
from service.engine.cpu import cpu_has_native_bf16

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

CONFIG_FILE = "train_config.json"
SUMMARY_FILE = "training_summary.json"
STATE_FILE = "trainer_state.pt"
FINAL_DIR = "adapter"
CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class TrainConfig:
    model: str = field(metadata={"help": "Local Hugging Face model directory of the served base model."})
    train_files: list[str] = field(metadata={"help": "Graded JSONL files (one record per line)."})
    output_dir: str = field(metadata={"help": "Where checkpoints, the config and the final adapter go."})
    split: str | None = field(
        default="train",
        metadata={"help": "Use only records of this split; 'all' (or None) uses every record."},
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
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW decoupled weight decay."})
    batch_size: int = field(default=8, metadata={"help": "Examples per forward pass."})
    grad_accum: int = field(default=1, metadata={"help": "Forward passes per optimizer step."})
    max_steps: int = field(default=300, metadata={"help": "Optimizer steps (ignored when epochs is set)."})
    epochs: float | None = field(
        default=None, metadata={"help": "Train for this many passes over the data instead of max_steps."}
    )
    warmup_steps: int = field(default=10, metadata={"help": "Linear warmup steps before the cosine decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm; 0 disables."})
    max_len: int = field(
        default=256,
        metadata={"help": "Longer query prompts are skipped (and counted), never truncated."},
    )
    seed: int = field(default=0, metadata={"help": "Seed for adapter init, dropout and data order."})
    dtype: Literal["auto", "bfloat16", "float32"] = field(
        default="auto",
        metadata={
            "help": "Base model dtype; the LoRA weights stay float32. auto: bfloat16 where the CPU "
            "computes it natively (AVX512-BF16/AMX), else float32 (bf16 is emulated and ~5x slower)."
        },
    )
    checkpoint_every: int = field(
        default=100, metadata={"help": "Save a resumable checkpoint every N steps."}
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
        if not self.train_files:
            raise ValueError("train_files: need at least one JSONL file")
        positive = {
            "lora_r": self.lora_r,
            "lora_alpha": self.lora_alpha,
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "max_steps": self.max_steps,
            "max_len": self.max_len,
            "checkpoint_every": self.checkpoint_every,
            "learning_rate": self.learning_rate,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name}: must be positive, got {value}")
        if self.top_layers is not None and not self.top_layers > 0:
            raise ValueError(f"top_layers: must be positive, got {self.top_layers}")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs: must be positive, got {self.epochs}")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout: must be in [0, 1), got {self.lora_dropout}")
        for name in ("weight_decay", "warmup_steps", "max_grad_norm", "kl_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: must be >= 0, got {getattr(self, name)}")
        if not self.target_modules:
            raise ValueError("target_modules: need at least one module name")
        parse_repeats(self.repeat)
        parse_repeats(self.every_choice, option="every_choice")


@dataclass(frozen=True)
class Example:
    """One tokenized training example."""

    input_ids: list[int]
    label: int  # 1: the proposed answer is correct (target "yes"), 0: incorrect ("no")
    # Leading positions that belong to the question and the answer (the KL region).
    prefix_len: int


# ---------------------------------------------------------------- data


def read_records(paths: Iterable[str | Path], *, split: str | None = None) -> list[dict[str, Any]]:
    """Graded records from JSONL files, optionally only one split, in file order."""
    records = []
    for path in paths:
        with Path(path).open() as handle:
            for line_no, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{line_no}: not JSON: {exc}") from exc
                if split is None or record.get("split") == split:
                    records.append(record)
    return records


def parse_repeats(specs: Sequence[str], *, option: str = "repeat") -> dict[str, int]:
    """{"arc_easy": 3} from ["arc_easy=3"]; ValueError names the option and the bad spec."""
    repeats = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"{option}: expected SOURCE=N with N >= 1, got {spec!r}")
        repeats[name.strip()] = int(value)
    return repeats


def drop_sources(records: Sequence[dict[str, Any]], excluded: Iterable[str]) -> list[dict[str, Any]]:
    """Records whose source is not excluded (records without a source are users' own: kept)."""
    skip = set(excluded)
    return [r for r in records if r.get("source") not in skip]


def oversample(records: Sequence[dict[str, Any]], repeats: dict[str, int]) -> list[dict[str, Any]]:
    """Each record repeated by its source's factor (1 when not listed); order kept."""
    return [r for r in records for _ in range(repeats.get(str(r.get("source")), 1))]


def count_by_source(pairs: Iterable[tuple[str | None, bool]]) -> dict[str, dict[str, int]]:
    """{source: {"n", "correct"}} from (source, correct) pairs; no source counts as "user"."""
    per_source: dict[str, dict[str, int]] = {}
    for source, correct in pairs:
        entry = per_source.setdefault(source or "user", {"n": 0, "correct": 0})
        entry["n"] += 1
        entry["correct"] += int(correct)
    return per_source


def every_choice_training_records(config: TrainConfig) -> list[dict[str, Any]]:
    """The every_choice records of config (see TrainConfig.every_choice), sources in order.

    Raises:
        EvaluationOnlyError: an evaluation-only source (MMLU) was named.
        ValueError: a source that is not multiple choice or not known.
    """
    from adapters.data import EVAL_LOADERS, LOADERS, EvaluationOnlyError, every_choice_records, load_source

    root = Path(config.data_dir) if config.data_dir else None
    records: list[dict[str, Any]] = []
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


def question_messages(record: dict[str, Any]) -> list[dict[str, str]]:
    """The chat the record's answer replies to (its messages or question, context rendered in)."""
    if record.get("messages") is not None:
        return question_chat(messages=record["messages"], context=record.get("context"))
    return question_chat(question=str(record["question"]), context=record.get("context"))


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def tokenize_record(tokenizer: Any, record: dict[str, Any]) -> Example:
    question = question_messages(record)
    ids = query_ids(tokenizer, question, str(record["answer"]))
    # The question+answer part of the prompt is what the base model also sees when it
    # answers; measuring it as the shared prefix with the unqueried conversation needs
    # no knowledge of the chat template.
    unqueried = [*question, {"role": "assistant", "content": str(record["answer"])}]
    prefix = common_prefix_len(ids, encode_rendered(tokenizer, render(tokenizer, unqueried)))
    return Example(input_ids=ids, label=int(bool(record["correct"])), prefix_len=prefix)


def tokenize_records(
    tokenizer: Any, records: Sequence[dict[str, Any]], *, max_len: int
) -> tuple[list[Example], int]:
    """Tokenized examples and the number skipped for being longer than max_len.

    Over-long prompts are dropped rather than truncated: cutting the question or the
    answer would teach the adapter to judge an answer it was not shown.
    """
    examples, skipped = [], 0
    for record in records:
        example = tokenize_record(tokenizer, record)
        if len(example.input_ids) > max_len:
            skipped += 1
            continue
        examples.append(example)
    return examples, skipped


def class_weights(labels: Sequence[int]) -> tuple[float, float]:
    """Per-example weights (w_no, w_yes) that give both classes the same total weight
    and keep the mean weight at 1; a class that is absent gets weight 0."""
    n = len(labels)
    n_yes = sum(labels)
    n_no = n - n_yes
    w_no = n / (2 * n_no) if n_no else 0.0
    w_yes = n / (2 * n_yes) if n_yes else 0.0
    return w_no, w_yes


def batch_order(n_examples: int, batch_size: int, *, seed: int, epoch: int) -> list[list[int]]:
    """The micro-batches of one epoch: a seeded permutation cut into batch_size chunks.

    A pure function of (seed, epoch), so a resumed run sees the same data order as an
    uninterrupted one.
    """
    perm = np.random.default_rng([seed, epoch]).permutation(n_examples).tolist()
    return [perm[i : i + batch_size] for i in range(0, n_examples, batch_size)]


def micro_batches(n_examples: int, batch_size: int, *, seed: int, start: int) -> Iterator[list[int]]:
    """Micro-batch index lists from global micro-batch number `start` on, forever."""
    per_epoch = math.ceil(n_examples / batch_size)
    index = start
    while True:
        epoch, offset = divmod(index, per_epoch)
        for batch in batch_order(n_examples, batch_size, seed=seed, epoch=epoch)[offset:]:
            yield batch
            index += 1


def total_steps(config: TrainConfig, n_examples: int) -> int:
    if config.epochs is None:
        return config.max_steps
    per_epoch = math.ceil(n_examples / config.batch_size)
    return max(1, math.ceil(config.epochs * per_epoch / config.grad_accum))


def left_pad(sequences: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), left-padded so every sequence ends at the last
    column: the label logits are then read at position -1 for the whole batch."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 at each sequence's first real token, as vLLM numbers
    them; left padding would otherwise shift every position."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def prefix_mask(mask: torch.Tensor, prefix_lens: Sequence[int]) -> torch.Tensor:
    """For left-padded rows: 1 on the first prefix_len real tokens of each row."""
    import torch

    width = mask.shape[1]
    lengths = mask.sum(-1)
    columns = torch.arange(width).unsqueeze(0)
    start = (width - lengths).unsqueeze(1)
    prefix = torch.tensor(list(prefix_lens)).unsqueeze(1)
    return ((columns >= start) & (columns < start + prefix)).long()


# ---------------------------------------------------------------- loss


def label_loss(
    label_logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Cross-entropy over the two label logits [no, yes]: -log softmax([l_no, l_yes])[label].

    Normalizing over two logits instead of the vocabulary makes this the logistic loss
    of the classifier sigmoid(l_yes - l_no) that the service serves.
    """
    import torch.nn.functional as F

    losses = F.cross_entropy(label_logits.float(), labels, reduction="none")
    if weights is not None:
        losses = losses * weights
    return losses.mean()


def divergence(
    logits: torch.Tensor, base_logits: torch.Tensor, mask: torch.Tensor, *, kind: str = "kl"
) -> torch.Tensor:
    """Mean over masked positions of KL(base || adapted) or JSD(base, adapted), in nats.

    logits, base_logits: (batch, seq, vocab); mask: (batch, seq), 1 where counted.
    """
    import torch

    log_p = torch.log_softmax(base_logits.float(), dim=-1)
    log_q = torch.log_softmax(logits.float(), dim=-1)
    if kind == "kl":
        per_position = (log_p.exp() * (log_p - log_q)).sum(-1)
    elif kind == "jsd":
        log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2.0)
        per_position = 0.5 * (log_p.exp() * (log_p - log_m)).sum(-1) + 0.5 * (
            log_q.exp() * (log_q - log_m)
        ).sum(-1)
    else:
        raise ValueError(f"kind: expected 'kl' or 'jsd', got {kind!r}")
    weights = mask.to(per_position.dtype)
    return (per_position * weights).sum() / weights.sum().clamp(min=1.0)


def label_logits_of(
    model: Any, input_ids: torch.Tensor, mask: torch.Tensor, tokens: LabelTokens, *, all_logits: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Label logits (batch, 2) = [no, yes] at the last position, plus the full logits
    when all_logits (for the KL term); otherwise only the last position goes through
    the LM head, which on a 49k vocabulary is a real saving."""
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=position_ids(mask),
        logits_to_keep=0 if all_logits else 1,
        use_cache=False,
    )
    last = out.logits[:, -1, :]
    label_logits = last[:, [tokens.no_id, tokens.yes_id]]
    return label_logits, (out.logits if all_logits else None)


# ---------------------------------------------------------------- model


def resolve_dtype(name: str) -> Literal["bfloat16", "float32"]:
    """The concrete dtype for `auto`: measured on an AVX2-only CPU, a bf16 training step
    of SmolLM2-135M took ~220 s against ~45 s in float32, because bf16 matmuls are
    emulated there."""
    if name == "auto":
        return "bfloat16" if cpu_has_native_bf16() else "float32"
    if name not in ("bfloat16", "float32"):
        raise ValueError(f"dtype: expected auto, bfloat16 or float32, got {name!r}")
    return "float32" if name == "float32" else "bfloat16"


def torch_dtype(name: str) -> torch.dtype:
    import torch

    return {"bfloat16": torch.bfloat16, "float32": torch.float32}[resolve_dtype(name)]


def load_base(model_dir: str | Path, dtype: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(dtype))
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


# ---------------------------------------------------------------- checkpoints


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The highest-numbered complete checkpoint (its state file is written last)."""
    found = []
    for path in output_dir.glob("checkpoint-*"):
        match = CHECKPOINT_PATTERN.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def save_checkpoint(
    model: Any, optimizer: Any, scheduler: Any, step: int, history: list[dict[str, float]], output_dir: Path
) -> Path:
    import torch

    path = output_dir / f"checkpoint-{step}"
    model.save_pretrained(path)
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "history": history,
    }
    torch.save(state, path / STATE_FILE)
    return path


def load_checkpoint(
    model: Any, optimizer: Any, scheduler: Any, path: Path
) -> tuple[int, list[dict[str, float]]]:
    """Restore the adapter, optimizer, schedule and RNG; returns (step, loss history)."""
    import torch
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
    state = torch.load(path / STATE_FILE, weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"]), list(state["history"])


# ---------------------------------------------------------------- training


def batch_loss(
    model: Any,
    batch: Sequence[Example],
    tokens: LabelTokens,
    config: TrainConfig,
    *,
    weights: tuple[float, float],
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of one micro-batch and its parts (label loss, divergence)."""
    import torch

    ids, mask = left_pad([e.input_ids for e in batch])
    target = torch.tensor([e.label for e in batch])
    example_weights = torch.tensor([weights[e.label] for e in batch])
    label_logits, logits = label_logits_of(model, ids, mask, tokens, all_logits=config.kl_weight > 0)
    loss = label_loss(label_logits, target, example_weights)
    parts = {"loss": loss.item(), "kl": 0.0}
    if logits is not None:
        # The reference is the same network with the adapters switched off, so no
        # second copy of the base model is kept in memory.
        with torch.no_grad(), model.disable_adapter():
            base_logits = model(
                input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False
            ).logits
        kl = divergence(
            logits, base_logits, prefix_mask(mask, [e.prefix_len for e in batch]), kind=config.kl_type
        )
        parts["kl"] = kl.item()
        loss = loss + config.kl_weight * kl
    return loss, parts


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: TrainConfig) -> Path:
    """Fine-tune a LoRA adapter on the uncertainty query; returns the final adapter dir.

    Resumes from the latest checkpoint in config.output_dir when config.resume is set.

    Raises:
        ValueError: no usable training examples (none in the split, or all too long).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import get_cosine_schedule_with_warmup

    from service.lora.manifest import weights_fingerprint

    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    config = dataclasses.replace(config, dtype=resolve_dtype(config.dtype))
    seed_everything(config.seed)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / CONFIG_FILE).write_text(json.dumps(dataclasses.asdict(config), indent=2) + "\n")

    base, tokenizer = load_base(config.model, config.dtype)
    tokens = label_tokens(tokenizer)
    records = oversample(
        drop_sources(read_records(config.train_files, split=config.split), config.exclude_sources),
        parse_repeats(config.repeat),
    )
    choice_records = drop_sources(every_choice_training_records(config), config.exclude_sources)
    if choice_records:
        log.info("%d every-choice records from %s", len(choice_records), config.every_choice)
    records += choice_records
    examples, skipped = tokenize_records(tokenizer, records, max_len=config.max_len)
    if not examples:
        raise ValueError(
            f"no training examples: {len(records)} records in split {config.split!r}, {skipped} too long"
        )
    labels = [e.label for e in examples]
    n_yes = sum(labels)
    log.info(
        "%d examples (%d correct, %d incorrect, %.1f%% correct); %d skipped as longer than %d tokens",
        len(examples), n_yes, len(examples) - n_yes, 100 * n_yes / len(examples), skipped, config.max_len,
    )  # fmt: skip
    w_no, w_yes = class_weights(labels) if config.balance_classes else (1.0, 1.0)

    model = build_peft_model(base, config)
    model.print_trainable_parameters()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps = total_steps(config, len(examples))
    scheduler = get_cosine_schedule_with_warmup(optimizer, config.warmup_steps, steps)

    step, history = 0, list[dict[str, float]]()
    checkpoint = latest_checkpoint(output_dir) if config.resume else None
    if checkpoint is not None:
        step, history = load_checkpoint(model, optimizer, scheduler, checkpoint)
        log.info("resumed from %s at step %d", checkpoint, step)

    model.train()
    batches = micro_batches(
        len(examples), config.batch_size, seed=config.seed, start=step * config.grad_accum
    )
    progress = tqdm(total=steps, initial=step, desc="train", dynamic_ncols=True)
    while step < steps:
        loss_sum = kl_sum = 0.0
        for _ in range(config.grad_accum):
            batch = [examples[i] for i in next(batches)]
            loss, parts = batch_loss(model, batch, tokens, config, weights=(w_no, w_yes))
            (loss / config.grad_accum).backward()
            loss_sum += parts["loss"] / config.grad_accum
            kl_sum += parts["kl"] / config.grad_accum
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        history.append({"step": step, "loss": loss_sum, "kl": kl_sum, "lr": scheduler.get_last_lr()[0]})
        progress.update(1)
        progress.set_postfix(loss=f"{loss_sum:.4f}", **({"kl": f"{kl_sum:.4f}"} if config.kl_weight else {}))
        if step % config.checkpoint_every == 0 and step < steps:
            save_checkpoint(model, optimizer, scheduler, step, history, output_dir)
    progress.close()

    final = output_dir / FINAL_DIR
    if final.exists():
        shutil.rmtree(final)
    model.save_pretrained(final)
    summary = {
        "template_version": QUERY_TEMPLATE_VERSION,
        "base_model": {
            "name": Path(config.model).name,
            "weights_sha256": weights_fingerprint(Path(config.model)),
        },
        "label_token_ids": {"no": tokens.no_id, "yes": tokens.yes_id},
        "train_files": [str(p) for p in config.train_files],
        "split": config.split,
        "examples": len(examples),
        "repeat": parse_repeats(config.repeat),
        "exclude_sources": sorted(config.exclude_sources),
        "every_choice": parse_repeats(config.every_choice, option="every_choice"),
        "every_choice_per_source": count_by_source((r["source"], r["correct"]) for r in choice_records),
        "correct": n_yes,
        "incorrect": len(examples) - n_yes,
        "skipped_too_long": skipped,
        "steps": steps,
        "history": history,
    }
    (final / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    log.info("saved adapter to %s", final)
    return final


# ---------------------------------------------------------------- evaluation


def label_logit_gaps(
    model: str | Path | Any,
    adapter_dir: str | Path | None,
    records: Sequence[dict[str, Any]],
    *,
    batch_size: int = 8,
    tokenizer: Any = None,
    dtype: Literal["bfloat16", "float32"] = "float32",
) -> np.ndarray:
    """logit(yes) - logit(no) of the query prompt for each record, with transformers.

    model is a model directory or an already loaded model (then pass tokenizer, or it
    is loaded from the model's name_or_path); adapter_dir, if given, is applied on
    top with peft. Records need "question" and "answer". The service computes the same
    gap with vLLM; this is the cross-check.
    """
    import torch
    from transformers import AutoTokenizer

    if isinstance(model, (str, Path)):
        model, loaded_tokenizer = load_base(model, dtype)
        tokenizer = tokenizer or loaded_tokenizer
    elif tokenizer is None:
        tokenizer = AutoTokenizer.from_pretrained(model.config.name_or_path)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir))
    tokens = label_tokens(tokenizer)
    prompts = [query_ids(tokenizer, question_messages(r), str(r["answer"])) for r in records]
    was_training = model.training
    model.eval()
    gaps = []
    with torch.no_grad():
        for start in range(0, len(prompts), batch_size):
            ids, mask = left_pad(prompts[start : start + batch_size])
            # Wherever the model lives (the GPU in the benchmark's baseline).
            ids, mask = ids.to(model.device), mask.to(model.device)
            label_logits, _ = label_logits_of(model, ids, mask, tokens)
            gaps.append((label_logits[:, 1] - label_logits[:, 0]).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(gaps) if gaps else np.zeros(0, dtype=np.float32)


def main(argv: Sequence[str] | None = None) -> None:
    from transformers import HfArgumentParser

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # HfArgumentParser's stub wants its own DataClassType protocol; any dataclass works.
    parser = HfArgumentParser(TrainConfig)  # type: ignore[arg-type]
    (config,) = parser.parse_args_into_dataclasses(args=argv)
    print(train(config))


if __name__ == "__main__":
    main()
