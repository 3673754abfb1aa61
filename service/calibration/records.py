"""The graded record: one (question, answer, correct) example, shared by the service and the
training job.

The training job labels, trains, fits and evaluates on these records; the service's
feedback export writes them. Splits come from a hash of (source, id), so they are stable
across runs and machines. MMLU is evaluation-only: its records never get the "train" split
and `ensure_trainable` refuses them.

JSONL format, one object a line:

    {"question": "Who wrote Hamlet?", "answer": "Shakespeare", "correct": true, "source": "mine"}

`question` is the user message, `answer` the proposed answer (both exactly as the
confidence query will see them), `correct` a JSON boolean; `source` is optional.
Files written by the labelling job use the same format with more keys
(`id`, `kind`, `split`, `meta`), which the reader also accepts and validates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

Kind = Literal["mc", "open", "numeric"]
Split = Literal["train", "calibration", "test"]
KINDS: tuple[str, ...] = get_args(Kind)
SPLITS: tuple[str, ...] = get_args(Split)

# Sources whose items may never be trained on.
EVAL_ONLY_SOURCES = frozenset({"mmlu"})


class DataError(Exception):
    """Base class for data problems."""


class DataFormatError(DataError, ValueError):
    """A data file does not have the expected format (the message names lines)."""


class EvaluationOnlyError(DataError, ValueError):
    """Evaluation-only items (MMLU) were about to be used for training."""


def stable_seed(*parts: object) -> int:
    """A seed derived from content with sha256, unlike `hash()` the same on every machine."""
    digest = hashlib.sha256("\0".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass(frozen=True)
class SplitConfig:
    """Fractions of each source that go to train / calibration / test."""

    train: float = 0.70
    calibration: float = 0.15
    test: float = 0.15
    salt: str = field(default="", metadata={"help": "change to draw a different split"})

    def __post_init__(self) -> None:
        fractions = (self.train, self.calibration, self.test)
        if any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")


DEFAULT_SPLIT = SplitConfig()


def hash_unit(*parts: object) -> float:
    """A number in [0, 1) from sha256 of the parts: uniform, stable everywhere."""
    return stable_seed(*parts) / 2.0**64


def assign_split(source: str, item_id: str, config: SplitConfig = DEFAULT_SPLIT) -> Split:
    """The split of an item, from a hash of (source, id) and the configured fractions.

    Evaluation-only sources never land in "train": what would be train goes to test.
    """
    u = hash_unit(config.salt, source, item_id)
    if u < config.train:
        return "test" if source in EVAL_ONLY_SOURCES else "train"
    if u < config.train + config.calibration:
        return "calibration"
    return "test"


def ensure_trainable(records: Iterable[Any]) -> None:
    """Refuse evaluation-only items (MMLU) in training data.

    Raises:
        EvaluationOnlyError: naming up to five offending ids.
    """
    bad = [r.id for r in records if getattr(r, "eval_only", False) or (r.source or "") in EVAL_ONLY_SOURCES]
    if bad:
        raise EvaluationOnlyError(
            f"{len(bad)} evaluation-only item(s) ({', '.join(map(str, bad[:5]))}) cannot be used for training"
        )


@dataclass
class GradedRecord:
    """One graded (question, answer) pair: a training or evaluation example for the
    confidence query. See the module docstring for the JSONL format."""

    question: str
    answer: str
    correct: bool
    source: str | None = None
    id: str = ""
    kind: str | None = None
    split: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.id:
            self.id = f"user:{stable_seed(self.question, self.answer):016x}"
        if self.split is None:
            self.split = assign_split(self.source or "user", self.id)

    def to_dict(self) -> dict[str, Any]:
        """The JSONL object, keys in a reading order (identity, then content, then meta)."""
        fields = asdict(self)
        order = ("id", "source", "kind", "split", "question", "answer", "correct", "meta")
        return {key: fields[key] for key in order}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


_OPTIONAL_STR = ("source", "id", "kind", "split")
MAX_REPORTED_ERRORS = 20


def _validate_record(obj: Any) -> list[str]:
    """Problems with one decoded JSONL line; an empty list means it is a valid record."""
    if not isinstance(obj, dict):
        return [f"expected a JSON object, got {type(obj).__name__}"]
    problems = []
    for key in ("question", "answer"):
        if not isinstance(obj.get(key), str):
            problems.append(f"'{key}' must be a string")
    if isinstance(obj.get("question"), str) and not obj["question"].strip():
        problems.append("'question' must not be empty")
    if not isinstance(obj.get("correct"), bool):
        problems.append("'correct' must be true or false (a JSON boolean)")
    for key in _OPTIONAL_STR:
        if obj.get(key) is not None and not isinstance(obj[key], str):
            problems.append(f"'{key}' must be a string or absent")
    if isinstance(obj.get("split"), str) and obj["split"] not in SPLITS:
        problems.append(f"'split' must be one of {SPLITS}")
    if isinstance(obj.get("kind"), str) and obj["kind"] not in KINDS:
        problems.append(f"'kind' must be one of {KINDS}")
    if obj.get("meta") is not None and not isinstance(obj["meta"], dict):
        problems.append("'meta' must be an object or absent")
    return problems


def read_graded_jsonl(path: Path, *, split: Split | None = None) -> list[GradedRecord]:
    """Read and validate a graded JSONL file; blank lines are skipped.

    With `split`, only records of that split are returned; `split="train"` also runs
    the evaluation-only guard, so MMLU records cannot reach training through here.

    Raises:
        DataFormatError: listing `path:line: problem` for every invalid line (up to 20).
        EvaluationOnlyError: split="train" and an MMLU record is labelled train.
    """
    records: list[GradedRecord] = []
    errors: list[str] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                errors.append(f"{path}:{lineno}: invalid JSON ({exc.msg})")
                continue
            problems = _validate_record(obj)
            if problems:
                errors.extend(f"{path}:{lineno}: {p}" for p in problems)
                continue
            known = {k: obj.get(k) for k in ("question", "answer", "correct", *_OPTIONAL_STR)}
            record = GradedRecord(**known, meta=dict(obj.get("meta") or {}))
            if "id" in obj and record.id in seen:
                first = seen[record.id]
                errors.append(f"{path}:{lineno}: duplicate id {record.id!r} (first on line {first})")
                continue
            seen[record.id] = lineno
            records.append(record)
    if errors:
        hidden = len(errors) - MAX_REPORTED_ERRORS
        more = f"\n... and {hidden} more" if hidden > 0 else ""
        raise DataFormatError(
            f"{len(errors)} problem(s) in {path}:\n" + "\n".join(errors[:MAX_REPORTED_ERRORS]) + more
        )
    if split is None:
        return records
    chosen = [r for r in records if r.split == split]
    if split == "train":
        ensure_trainable(chosen)
    return chosen
