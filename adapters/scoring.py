"""Confidence readings over graded records, through the serving engine (vLLM).

Temperature fitting and evaluation read the adapter exactly as the service does — same
engine, same query ids, same label tokens — so the reported calibration is the
calibration users get. Also the two non-query baselines of the report: verbalized
confidence and sampling self-consistency.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import numpy as np
from tqdm import tqdm

from adapters.data import GradedRecord, Kind, QAItem, stable_seed
from adapters.grading import answer_window, extract_number, normalize_answer
from adapters.labelling import answer_messages
from service.calibration import query as cq
from service.engine.base import Engine, LoRA, SamplingOptions

T = TypeVar("T")
R = TypeVar("R")
CHUNK = 256
VERBALIZED_QUERY = (
    "How likely is it that the proposed answer is correct? "
    "Reply with only a number from 0 to 100 (a percentage)."
)


def offline_engine(model: str) -> Engine:
    """The engine offline jobs read adapters with: one LoRA slot, any rank the trainer allows."""
    from service.engine.vllm_engine import VLLMEngine

    return VLLMEngine(model, max_model_len=2048, max_loras=1, max_lora_rank=64)


async def run_chunked(
    items: Sequence[T], func: Callable[[T], Awaitable[R]], *, desc: str, chunk: int = CHUNK
) -> list[R]:
    """Await func over items, `chunk` at a time concurrently (vLLM batches each chunk)."""
    out: list[R] = []
    with tqdm(total=len(items), desc=desc, unit="item") as bar:
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            out += await asyncio.gather(*(func(x) for x in part))
            bar.update(len(part))
    return out


def question_of(record: GradedRecord) -> list[cq.Message]:
    return record.chat()


async def query_gaps(engine: Engine, records: Sequence[GradedRecord], lora: LoRA | None) -> np.ndarray:
    """logit(yes) − logit(no) of the confidence query for each record (T not applied)."""
    labels = cq.label_tokens(engine.tokenizer)

    async def one(record: GradedRecord) -> float:
        ids = cq.query_ids(engine.tokenizer, question_of(record), record.answer)
        lp_no, lp_yes = await engine.next_token_logprobs(ids, [labels.no_id, labels.yes_id], lora=lora)
        return cq.label_logit_gap(lp_no, lp_yes)

    name = lora.name if lora else "zero-shot"
    return np.asarray(await run_chunked(records, one, desc=f"query gaps ({name})"))


def parse_percentage(text: str) -> float | None:
    """First number in a verbalized reply as a probability; '85' and '85%' and '0.85' all → 0.85."""
    match = re.search(r"\d+(?:\.\d+)?", text)
    if match is None:
        return None
    value = float(match.group())
    if value > 1.0:
        value /= 100.0
    return min(max(value, 0.0), 1.0)


async def verbalized(engine: Engine, records: Sequence[GradedRecord]) -> tuple[np.ndarray, float]:
    """Ask the base model for a probability after its answer. Unparseable replies count
    as 0.5 (no information); returns the confidences and the fraction that parsed."""
    parsed = 0

    async def one(record: GradedRecord) -> float:
        nonlocal parsed
        messages = [
            *question_of(record),
            {"role": "assistant", "content": record.answer},
            {"role": "user", "content": VERBALIZED_QUERY},
        ]
        ids = cq.encode_rendered(engine.tokenizer, cq.render(engine.tokenizer, messages))
        result = await engine.generate(ids, SamplingOptions(max_tokens=8, temperature=0.0))
        value = parse_percentage(result.completions[0].text)
        parsed += value is not None
        return 0.5 if value is None else value

    values = await run_chunked(records, one, desc="verbalized")
    return np.asarray(values), parsed / max(len(records), 1)


def softmax(scores: Sequence[float]) -> np.ndarray:
    arr = np.asarray(scores, dtype=float)
    arr = np.exp(arr - arr.max())
    return arr / arr.sum()


def token_f1(a: str, b: str) -> float:
    """SQuAD-style token overlap F1 of two normalized answers."""
    x, y = a.split(), b.split()
    common = sum((Counter(x) & Counter(y)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(x), common / len(y)
    return 2 * precision * recall / (precision + recall)


def same_answer(kind: str | None, a: str, b: str) -> bool:
    """Whether two answers agree, for self-consistency.

    Numbers compare by value. Free text agrees when the graded windows (first line,
    first few words — what grading looks at) are equal after normalization, one
    contains the other, or their token F1 is at least 0.5: sampled answers rephrase
    ("Paris" / "It is Paris, France"), and counting that as disagreement would make the
    baseline look worse than it is.
    """
    if kind == "numeric":
        x, y = extract_number(a), extract_number(b)
        return x is not None and y is not None and math.isclose(x, y, rel_tol=1e-6)
    p, q = normalize_answer(answer_window(a)), normalize_answer(answer_window(b))
    if not p or not q:
        return p == q
    return p == q or f" {p} " in f" {q} " or f" {q} " in f" {p} " or token_f1(p, q) >= 0.5


async def self_consistency(
    engine: Engine, records: Sequence[GradedRecord], *, k: int, seed: int
) -> np.ndarray:
    """Fraction of k sampled answers (temperature 1) that agree with the greedy answer.

    Multiple choice samples the choice from the softmax of the stored per-choice
    scores (the same likelihoods that picked the greedy answer); generated answers are
    sampled with the same prompt as the greedy one and compared after normalization.
    """

    async def one(record: GradedRecord) -> float:
        if record.kind == "mc":
            probs = softmax(record.meta["choice_scores"])
            rng = np.random.default_rng(stable_seed(seed, record.id))
            return float(np.mean(rng.choice(len(probs), size=k, p=probs) == record.meta["choice"]))
        kind: Kind = "numeric" if record.kind == "numeric" else "open"
        item = QAItem(
            id=record.id,
            source=record.source or "user",
            kind=kind,
            question=record.question,
            aliases=[record.answer or "-"],
        )
        ids = cq.encode_rendered(engine.tokenizer, cq.render(engine.tokenizer, answer_messages(item)))
        options = SamplingOptions(max_tokens=32, temperature=1.0, stop=("\n",), n=k)
        result = await engine.generate(ids, options)
        agree = [same_answer(record.kind, c.text.strip(), record.answer) for c in result.completions]
        return float(np.mean(agree))

    return np.asarray(await run_chunked(records, one, desc=f"self-consistency k={k}", chunk=64))
