"""The calibrated head: answer likelihood + the LoRA + Prompt gap → one probability.

The paper's query (`adapter`) reads one number, the uncertainty adapter's logit gap.
On the embedded 135M model that number hardly ranks right answers above wrong ones,
while the base model's own likelihood of the answer does (see the README). The head
is a logistic regression over both, fitted by the training job on the calibration
split and stored in the adapter's manifest; the service applies it with this module
only (pure math, no numpy, no model), so training and serving compute the same number.

Features of one (question, answer):

- ``adapter_gap``: logit(yes) − logit(no) of the query through the adapter (T = 1);
- ``answer_logprob_sum`` / ``answer_logprob_mean``: the base model's log-probabilities
  of the answer's tokens as the assistant's reply to the question — for /score from a
  prefill, for /generate the sampled tokens' own log-probabilities;
- ``answer_tokens_log``: log(1 + number of answer tokens), so length is weighed apart;
- ``lettered_*``: whether the answer picks a lettered choice ("B. text"), alone and
  times the other signals;
- ``numeric_answer``: whether the answer is a bare number ("56", "-3.5", "1,200"). A
  model can be sure of a number and still be wrong most of the time (the embedded model's
  arithmetic: 1 % right at high likelihood), so numbers get their own level of confidence.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.calibration import query as cq

FEATURE_NAMES: tuple[str, ...] = (
    "adapter_gap",
    "answer_logprob_sum",
    "answer_logprob_mean",
    "answer_tokens_log",
    "lettered_answer",
    "lettered_x_adapter_gap",
    "lettered_x_logprob_sum",
    "lettered_x_logprob_mean",
    "numeric_answer",
)
# "B. some text": an answer that picks a lettered choice shown in the question. Its text
# was copied from the question, so its likelihood means something else than a free
# answer's; the lettered_x_* features give that regime its own slopes.
LETTERED = re.compile(r"^\s*\(?[A-J][.)]\s")
# A bare number, optionally signed, with thousands separators, decimals, a currency or
# percent sign and a final full stop: what arithmetic answers look like.
NUMERIC = re.compile(r"\s*[-+]?[$€£]?\d[\d,]*(\.\d+)?\s*%?\.?\s*")
# An empty answer gets this per-token log-probability: "no evidence", far below any
# real token, but finite so the head's arithmetic stays defined.
EMPTY_ANSWER_LOGPROB = -20.0


@dataclass(frozen=True)
class AnswerLikelihood:
    """Summary of the base model's log-probabilities of an answer's tokens."""

    logprob_sum: float
    logprob_mean: float
    tokens: int


def answer_likelihood(token_logprobs: Sequence[float]) -> AnswerLikelihood:
    """Sum, mean and count of per-token log-probabilities.

    Non-finite values (a -inf from a token outside a truncated distribution) are
    clipped to EMPTY_ANSWER_LOGPROB so one token cannot make the features infinite.
    """
    values = [v if math.isfinite(v) else EMPTY_ANSWER_LOGPROB for v in token_logprobs]
    values = [max(v, EMPTY_ANSWER_LOGPROB) for v in values]
    if not values:
        return AnswerLikelihood(EMPTY_ANSWER_LOGPROB, EMPTY_ANSWER_LOGPROB, 0)
    total = float(sum(values))
    return AnswerLikelihood(total, total / len(values), len(values))


def features(adapter_gap: float, likelihood: AnswerLikelihood, answer: str) -> dict[str, float]:
    """The head's input, by name (see the module docstring and LETTERED)."""
    lettered = 1.0 if LETTERED.match(answer) else 0.0
    return {
        "adapter_gap": float(adapter_gap),
        "answer_logprob_sum": likelihood.logprob_sum,
        "answer_logprob_mean": likelihood.logprob_mean,
        "answer_tokens_log": math.log1p(likelihood.tokens),
        "lettered_answer": lettered,
        "lettered_x_adapter_gap": lettered * float(adapter_gap),
        "lettered_x_logprob_sum": lettered * likelihood.logprob_sum,
        "lettered_x_logprob_mean": lettered * likelihood.logprob_mean,
        "numeric_answer": 1.0 if NUMERIC.fullmatch(answer) else 0.0,
    }


def likelihood_prompt(
    tokenizer: cq.ChatTokenizer, question: Sequence[cq.Message], answer: str
) -> tuple[list[int], int]:
    """Ids of the rendered question followed by the answer's tokens, and where the answer
    starts: the answer scored as the assistant's reply, the position /generate samples it at."""
    prefix = cq.encode_rendered(tokenizer, cq.render(tokenizer, question))
    return prefix + list(tokenizer.encode(answer, add_special_tokens=False)), len(prefix)


def _finite(values: Sequence[float], what: str) -> None:
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{what} must be finite numbers")


class HeadParams(BaseModel):
    """A fitted head as stored in manifest.json under ``head``.

    ``p = sigmoid(intercept + Σ coef_i · (x_i − mean_i) / scale_i)``. Validated on load:
    known feature names, one finite coefficient, mean and positive scale per feature.
    """

    model_config = ConfigDict(extra="forbid")

    features: list[str] = Field(min_length=1)
    coef: list[float]
    intercept: float
    mean: list[float]
    scale: list[float]
    fitted_on: dict[str, int] = Field(default_factory=dict, description="items per group it was fitted on")

    @model_validator(mode="after")
    def _consistent(self) -> HeadParams:
        unknown = sorted(set(self.features) - set(FEATURE_NAMES))
        if unknown:
            raise ValueError(f"unknown head features {unknown}; known: {list(FEATURE_NAMES)}")
        if len(set(self.features)) != len(self.features):
            raise ValueError("head features must not repeat")
        n = len(self.features)
        if not (len(self.coef) == len(self.mean) == len(self.scale) == n):
            raise ValueError(f"head needs one coef, mean and scale per feature ({n})")
        _finite([*self.coef, *self.mean, *self.scale, self.intercept], "head parameters")
        if any(s <= 0 for s in self.scale):
            raise ValueError("head scales must be positive")
        return self


def sigmoid(x: float) -> float:
    """Numerically stable logistic function."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def head_logit(head: HeadParams, values: Mapping[str, float]) -> float:
    """The head's logit for one item's features (a mapping holding every head feature).

    Raises:
        ValueError: a feature is missing or not finite.
    """
    missing = [name for name in head.features if name not in values]
    if missing:
        raise ValueError(f"missing head features {missing}")
    xs = [float(values[name]) for name in head.features]
    _finite(xs, "head features")
    z = head.intercept
    for x, w, m, s in zip(xs, head.coef, head.mean, head.scale, strict=True):
        z += w * (x - m) / s
    return z


def head_confidence(head: HeadParams, values: Mapping[str, float]) -> float:
    """The calibrated probability that the answer is correct."""
    return sigmoid(head_logit(head, values))
