"""Every confidence signal of a graded record, read once through the serving engine.

For each (question, answer): the query's logit gap through the adapter and without it
(zero-shot), and the base model's log-probabilities of the answer's tokens as the reply
to the question. Fitting the head, the baselines and the report are then arithmetic on
these numbers, so each engine pass over a split happens once per adapter version.
Rows are cached as JSONL, keyed by record id.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from adapters.data import GradedRecord
from adapters.scoring import query_gaps, question_of, run_chunked
from service.calibration import estimator
from service.engine.base import Engine, LoRA

log = logging.getLogger(__name__)

SIGNALS = ("adapter_gap", "zero_shot_gap", "answer_logprob_sum", "answer_logprob_mean", "answer_tokens")


async def answer_likelihoods(
    engine: Engine, records: Sequence[GradedRecord]
) -> list[estimator.AnswerLikelihood]:
    """The base model's log-probabilities of each answer as the reply to its question."""

    async def one(record: GradedRecord) -> estimator.AnswerLikelihood:
        ids, start = estimator.likelihood_prompt(engine.tokenizer, question_of(record), record.answer)
        if len(ids) >= engine.max_model_len:
            ids = ids[: engine.max_model_len - 1]
        return estimator.answer_likelihood(await engine.prompt_logprobs(ids, start=start))

    return await run_chunked(records, one, desc="answer likelihood")


async def signals(engine: Engine, records: Sequence[GradedRecord], lora: LoRA) -> list[dict[str, Any]]:
    """One row per record: id, label, source, kind, and every signal in SIGNALS."""
    adapter = await query_gaps(engine, records, lora)
    zero_shot = await query_gaps(engine, records, None)
    likelihood = await answer_likelihoods(engine, records)
    rows = []
    for r, g, z, lk in zip(records, adapter, zero_shot, likelihood, strict=True):
        rows.append(
            {
                "id": r.id,
                "source": r.source,
                "kind": r.kind,
                "split": r.split,
                "correct": r.correct,
                "adapter_gap": float(g),
                "zero_shot_gap": float(z),
                "answer_logprob_sum": lk.logprob_sum,
                "answer_logprob_mean": lk.logprob_mean,
                "answer_tokens": lk.tokens,
                "group": r.meta.get("group"),
                "answer": r.answer,
            }
        )
    return rows


def write_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


def read_rows(path: Path) -> list[Mapping[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def head_inputs(row: Mapping[str, Any]) -> dict[str, float]:
    """A signal row as the head's named features (the same function the service uses)."""
    likelihood = estimator.AnswerLikelihood(
        row["answer_logprob_sum"], row["answer_logprob_mean"], int(row["answer_tokens"])
    )
    return estimator.features(row["adapter_gap"], likelihood, row["answer"])
