"""How far can the base model's own answer likelihood tell a right answer from a wrong one?

Issue 15 asks `/score` to separate (question, gold) from (question, wrong) pairs of the bundled
multiple-choice sets at AUROC >= 0.70. This experiment measures what the embedded model's
likelihood knows there, before any head is fitted: every choice text of each no-choice question
is scored as the assistant's reply to the chat-rendered question (log p(a | q)) and as the reply
to a question-free prompt (log p(a)). Their difference is the pointwise mutual information, the
"domain-conditional" correction for surface-form competition (Holtzman et al., 2021): a short,
common answer is likely whatever the question.

Two numbers per feature:
- pair AUROC: one (question, gold) and one (question, wrong) per question, pooled, as `/score`
  sees single items (the report's `pairs` view);
- within-question win rate: P(feature(gold) > feature(wrong)) over every wrong choice of the
  same question. It is what the pooled AUROC would reach if every question-level shift of the
  feature were removed, so a calibrated head on that feature alone cannot be expected above it.

Reads the calibration split only (this informs what to build; the test split stays unread).

Example:

    python -m adapters.likelihood_ceiling \\
        --out adapters/reports/smollm2-135m-uncertainty/experiments/likelihood-ceiling
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adapters import heldout
from adapters.data import GradedRecord
from adapters.heldout_eval import by_question, pairs
from adapters.scoring import question_of, run_chunked
from service.calibration import estimator
from service.calibration import query as cq
from service.calibration.metrics import auroc, bootstrap_ci
from service.engine.base import Engine

log = logging.getLogger(__name__)
Row = Mapping[str, Any]
# The question-free prompt of log p(a): a user turn that asks for an answer to nothing in particular.
PRIOR_QUESTION: list[cq.Message] = [{"role": "user", "content": "Answer:"}]
FEATURES: dict[str, Callable[[Row], float]] = {
    "logprob_sum": lambda r: r["sum"],
    "logprob_mean": lambda r: r["sum"] / r["tokens"],
    "pmi_sum": lambda r: r["sum"] - r["prior_sum"],
    "pmi_mean": lambda r: (r["sum"] - r["prior_sum"]) / r["tokens"],
}
# The README's examples: the answer `/score` should rank first, then the one it should not.
README_PAIRS = (
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    ("What is 7 * 8?", "56", "54"),
    ("Who wrote Hamlet?", "Shakespeare", "Dickens"),
)


def win_rate(rows: Sequence[Row], feature: Callable[[Row], float]) -> float:
    """P(feature(gold) > feature(wrong)) over every (gold, wrong) choice pair of a question;
    ties count half."""
    wins: list[float] = []
    for choices in by_question(rows).values():
        gold = [feature(r) for r in choices if r["correct"]]
        for wrong in (feature(r) for r in choices if not r["correct"]):
            wins += [float(g > wrong) + 0.5 * float(g == wrong) for g in gold]
    return float(np.mean(wins)) if wins else float("nan")


def pair_auroc(rows: Sequence[Row], feature: Callable[[Row], float], *, n_boot: int) -> dict[str, Any]:
    """Pooled AUROC of one feature on the question-paired view, with a bootstrap 95 % CI."""
    view = pairs(rows)
    y = np.array([float(r["correct"]) for r in view])
    x = np.array([feature(r) for r in view])
    # AUROC reads ranks only: a logistic squash of the standardized feature keeps them and
    # gives the probability-valued input the shared metrics expect.
    p = 1.0 / (1.0 + np.exp(-(x - x.mean()) / (x.std() or 1.0)))
    low, high = bootstrap_ci(auroc, p, y, n=n_boot)
    return {"n": len(view), "auroc": auroc(p, y), "ci": [low, high]}


def summarize(rows: Sequence[Row], *, n_boot: int = 1000) -> dict[str, Any]:
    """Per feature: pooled pair AUROC and within-question win rate, pooled and per source."""
    out: dict[str, Any] = {}
    groups = {"pooled": list(rows)}
    groups |= {s: [r for r in rows if r["source"] == s] for s in sorted({str(r["source"]) for r in rows})}
    for name, group in groups.items():
        out[name] = {
            f: {"pair": pair_auroc(group, fn, n_boot=n_boot), "win_rate": win_rate(group, fn)}
            for f, fn in FEATURES.items()
        }
    return out


async def logprob_sums(
    engine: Engine, items: Sequence[tuple[Sequence[cq.Message], str]]
) -> list[tuple[float, float, int]]:
    """(log p(a | q), log p(a | question-free prompt), answer tokens) of each (question, answer)."""

    async def one(item: tuple[Sequence[cq.Message], str]) -> tuple[float, float, int]:
        question, answer = item
        cond, prior = await asyncio.gather(
            _answer_logprobs(engine, question, answer), _answer_logprobs(engine, PRIOR_QUESTION, answer)
        )
        a, b = estimator.answer_likelihood(cond), estimator.answer_likelihood(prior)
        return a.logprob_sum, b.logprob_sum, a.tokens

    return await run_chunked(items, one, desc="likelihood")


async def _answer_logprobs(engine: Engine, question: Sequence[cq.Message], answer: str) -> list[float]:
    ids, start = estimator.likelihood_prompt(engine.tokenizer, question, answer)
    return await engine.prompt_logprobs(ids, start=start)


def signal_rows(records: Sequence[GradedRecord], sums: Sequence[tuple[float, float, int]]) -> list[Row]:
    return [
        {"id": r.id, "source": r.source, "correct": r.correct, "sum": s, "prior_sum": p, "tokens": n}
        for r, (s, p, n) in zip(records, sums, strict=True)
    ]


def readme_items() -> list[tuple[list[cq.Message], str]]:
    return [([{"role": "user", "content": q}], a) for q, right, wrong in README_PAIRS for a in (right, wrong)]


def readme_rows(sums: Sequence[tuple[float, float, int]]) -> list[dict[str, Any]]:
    rows = []
    for (question, answer), (s, p, n) in zip(readme_items(), sums, strict=True):
        values = {f: fn({"sum": s, "prior_sum": p, "tokens": n}) for f, fn in FEATURES.items()}
        rows.append({"question": question[0]["content"], "answer": answer, **values})
    return rows


def markdown(summary: Mapping[str, Any], readme: Sequence[Mapping[str, Any]]) -> str:
    lines = [
        "| set | feature | pair AUROC [95% CI] | within-question win rate |",
        "|---|---|---|---|",
    ]
    for name, features in summary.items():
        for f, v in features.items():
            lo, hi = v["pair"]["ci"]
            pair = f"{v['pair']['auroc']:.3f} [{lo:.3f}, {hi:.3f}]"
            lines.append(f"| {name} (n={v['pair']['n']}) | {f} | {pair} | {v['win_rate']:.3f} |")
    lines += ["", "| question | answer | " + " | ".join(FEATURES) + " |"]
    lines.append("|---|---|" + "---|" * len(FEATURES))
    for r in readme:
        values = " | ".join(f"{r[f]:.2f}" for f in FEATURES)
        lines.append(f"| {r['question']} | {r['answer']} | {values} |")
    return "\n".join(lines) + "\n"


async def run(out: Path, per_source: int, n_boot: int) -> dict[str, Any]:
    from adapters.labelling import resolve_model
    from adapters.scoring import offline_engine

    records = heldout.no_choice_records("calibration", per_source=per_source)
    engine = offline_engine(resolve_model(None))
    await engine.start()
    try:
        sums = await logprob_sums(engine, [(question_of(r), r.answer) for r in records])
        readme = await logprob_sums(engine, readme_items())
    finally:
        engine.shutdown()
    rows = signal_rows(records, sums)
    result: dict[str, Any] = {
        "split": "calibration",
        "records": len(records),
        "questions": len(by_question(rows)),
        "summary": summarize(rows, n_boot=n_boot),
        "readme_pairs": readme_rows(readme),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "result.md").write_text(markdown(result["summary"], result["readme_pairs"]))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--per-source", type=int, default=100, help="no-choice questions per source")
    parser.add_argument("--n-boot", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args.out, args.per_source, args.n_boot))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
