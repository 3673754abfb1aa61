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
A multi-turn chat goes in `messages` (`[{"role", "content"}, …]`, ending with the user's
turn; `question` then repeats that last turn's text), and the documents a RAG answer was
based on in `context` (a list of strings); both optional, rendered into the confidence
query by `service.calibration.query.question_chat`.
Files written by the labelling job use the same format with more keys
(`id`, `kind`, `split`, `meta`), which the reader also accepts and validates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from service.calibration.query import question_chat

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


CHAT_RULE = "must be a list of {role, content} strings ending with a user turn"


class GradedRecord(BaseModel):
    """One graded (question, answer) pair: a training or evaluation example for the
    confidence query. See the module docstring for the JSONL format.

    A record without an id gets one from its content; a record without a split gets the
    hash split of (source, id), so users' own files split as labelled ones do.
    """

    model_config = ConfigDict(validate_assignment=False)

    # Field order is the JSONL key order: identity, then content, then meta.
    id: str = ""
    source: str | None = None
    kind: Kind | None = None
    split: Split | None = None
    # A multi-turn chat (ending with the user turn the answer replies to) and the documents
    # the answer draws on; absent for plain question/answer records.
    messages: list[dict[str, str]] | None = None
    context: list[str] | None = None
    question: str
    answer: str
    correct: bool
    meta: dict[str, Any] = Field(default_factory=dict)

    @field_validator("question")
    @classmethod
    def _question_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("messages")
    @classmethod
    def _messages_end_with_the_user(cls, value: list[dict[str, str]] | None) -> list[dict[str, str]] | None:
        if value is not None and not (value and all({"role", "content"} <= m.keys() for m in value)
                                      and value[-1]["role"] == "user"):  # fmt: skip
            raise ValueError(CHAT_RULE)
        return value

    @field_validator("meta", mode="before")
    @classmethod
    def _meta_absent(cls, value: Any) -> Any:
        return {} if value is None else value

    @model_validator(mode="after")
    def _identity_and_split(self) -> GradedRecord:
        if not self.id:
            # The chat and documents count only when present: plain records keep their ids.
            extra = [json.dumps(x, sort_keys=True) for x in (self.messages, self.context) if x is not None]
            self.id = f"user:{stable_seed(self.question, self.answer, *extra):016x}"
        if self.split is None:
            self.split = assign_split(self.source or "user", self.id)
        return self

    def chat(self) -> list[dict[str, str]]:
        """The conversation the answer replies to, context rendered in (what the query asks about)."""
        if self.messages is not None:
            return question_chat(messages=self.messages, context=self.context)
        return question_chat(question=self.question, context=self.context)

    def to_dict(self) -> dict[str, Any]:
        """The JSONL object, keys in a reading order (identity, then content, then meta);
        `messages` and `context` only when set."""
        fields = self.model_dump()
        return {k: v for k, v in fields.items() if k not in ("messages", "context") or v is not None}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False)


MAX_REPORTED_ERRORS = 20
# What a user should read for a field's type errors (pydantic's own words name Python types).
_FIELD_PROBLEMS = {
    "question": "'question' must be a string",
    "answer": "'answer' must be a string",
    "correct": "'correct' must be true or false (a JSON boolean)",
    "split": f"'split' must be one of {SPLITS}",
    "kind": f"'kind' must be one of {KINDS}",
    "meta": "'meta' must be an object or absent",
    "messages": f"'messages' {CHAT_RULE}",
    "context": "'context' must be a list of strings or absent",
}


def record_problems(obj: Any) -> tuple[GradedRecord | None, list[str]]:
    """(the record, []) for a valid decoded JSONL line, else (None, the problems)."""
    if not isinstance(obj, dict):
        return None, [f"expected a JSON object, got {type(obj).__name__}"]
    try:
        # strict: JSON "yes" or 1 is not a boolean, 5 is not a string.
        return GradedRecord.model_validate(obj, strict=True), []
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else "record"
            if error["type"] == "missing":
                problems.append(f"'{name}' is required")
            elif error["type"] == "value_error":
                problems.append(f"'{name}' {error['ctx']['error']}")
            else:
                problems.append(_FIELD_PROBLEMS.get(name, f"'{name}' must be a string or absent"))
        return None, list(dict.fromkeys(problems))


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
            record, problems = record_problems(obj)
            if record is None:
                errors.extend(f"{path}:{lineno}: {p}" for p in problems)
                continue
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


def read_records(
    paths: Iterable[str | Path],
    *,
    split: Split | None = None,
    training: bool = False,
    exclude_sources: Iterable[str] = (),
) -> list[GradedRecord]:
    """The one reader of graded data: every record of the files, in order, validated.

    Records without a split get the hash split. With `split`, only that split; with
    `training`, evaluation-only (MMLU) records are refused whatever the split (asking
    for the train split implies it). Records of `exclude_sources` are left out.

    Raises:
        DataFormatError: invalid lines (named by file and line).
        EvaluationOnlyError: training data that holds evaluation-only records.
    """
    skip = set(exclude_sources)
    records = [
        r for path in paths for r in read_graded_jsonl(Path(path), split=split) if r.source not in skip
    ]
    if training:
        ensure_trainable(records)
    return records
