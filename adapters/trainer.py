"""LoRA + Prompt as a `transformers.Trainer`: the method is the loss, the rest is the library's.

The loss is the cross-entropy over just the two label logits [no, yes] at the query
position, i.e. exactly the binary classifier the service reads; an optional KL/JSD
term keeps the adapted model's next-token distribution over the question and answer
close to the base model's. Accumulation, mixed precision, checkpoints and resume,
logging, evaluation, early stopping and DDP/FSDP come from `Trainer`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence, Sized
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Sampler
from transformers import EvalPrediction, Trainer

from service.calibration.metrics import auroc, brier, ece, nll
from service.calibration.query import LabelTokens

if TYPE_CHECKING:
    from torch import nn


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
    model: Any, inputs: dict[str, torch.Tensor], tokens: LabelTokens, *, all_logits: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Label logits (batch, 2) = [no, yes] at the last position, plus the full logits
    when all_logits (for the KL term); otherwise only the last position goes through
    the LM head, which on a 49k vocabulary is a real saving."""
    out = model(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        position_ids=inputs["position_ids"],
        logits_to_keep=0 if all_logits else 1,
        use_cache=False,
    )
    label_logits = out.logits[:, -1, [tokens.no_id, tokens.yes_id]]
    return label_logits, (out.logits if all_logits else None)


def class_weights(labels: Sequence[int]) -> tuple[float, float]:
    """Per-example weights (w_no, w_yes) that give both classes the same total weight
    and keep the mean weight at 1; a class that is absent gets weight 0."""
    n = len(labels)
    n_yes = sum(labels)
    n_no = n - n_yes
    w_no = n / (2 * n_no) if n_no else 0.0
    w_yes = n / (2 * n_yes) if n_yes else 0.0
    return w_no, w_yes


class EpochPermutation(Sampler[int]):
    """One seeded permutation of the examples per epoch, a pure function of (seed, epoch).

    The order the hand-written loop used, so a run reproduces its loss curve; the
    Trainer calls set_epoch, so a resumed run sees the same order as an uninterrupted one.
    """

    def __init__(self, n_examples: int, *, seed: int) -> None:
        self.n_examples, self.seed, self.epoch = n_examples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        return iter(np.random.default_rng([self.seed, self.epoch]).permutation(self.n_examples).tolist())

    def __len__(self) -> int:
        return self.n_examples


def sigmoid_confidence(label_logits: np.ndarray) -> np.ndarray:
    """p(yes) from [no, yes] logits: sigmoid of the gap, as the service computes it (T = 1)."""
    from scipy.special import expit

    gaps = label_logits[:, 1].astype(np.float64) - label_logits[:, 0].astype(np.float64)
    return np.asarray(expit(gaps), dtype=np.float64)


def calibration_metrics(prediction: EvalPrediction) -> dict[str, float]:
    """ECE, AUROC, Brier and NLL of the untempered confidence on the evaluation split."""
    logits = prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    labels = prediction.label_ids
    labels = labels[0] if isinstance(labels, tuple) else labels
    p = sigmoid_confidence(np.asarray(logits))
    y = np.asarray(labels, dtype=np.float64)
    return {"ece": ece(p, y), "auroc": auroc(p, y), "brier": brier(p, y), "nll": nll(p, y)}


class QueryTrainer(Trainer):
    """Trains the query adapter: `compute_loss` is the method, `Trainer` does the rest.

    Args:
        tokens: the label token ids read at the query position.
        kl_weight, kl_type: the optional divergence from the base model over the
            question and answer positions.
        weights: per-class loss weights (w_no, w_yes); (1, 1) leaves the loss plain.
    """

    def __init__(
        self,
        *args: Any,
        tokens: LabelTokens,
        kl_weight: float = 0.0,
        kl_type: str = "kl",
        weights: tuple[float, float] = (1.0, 1.0),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.tokens, self.kl_weight, self.kl_type = tokens, kl_weight, kl_type
        self.class_weights = torch.tensor(weights)
        # The loss is a mean per micro-batch; the Trainer then divides it by the
        # accumulation steps, as the hand-written loop did.
        self.model_accepts_loss_kwargs = False
        self._parts: dict[str, list[float]] = {"label_loss": [], "kl": []}

    def _get_train_sampler(self, train_dataset: Any = None) -> Sampler[int]:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        assert isinstance(dataset, Sized)  # a list of examples
        return EpochPermutation(len(dataset), seed=self.args.seed)

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        labels = inputs["labels"]
        with_kl = self.kl_weight > 0
        label_logits, logits = label_logits_of(model, inputs, self.tokens, all_logits=with_kl)
        loss = label_loss(label_logits, labels, self.class_weights.to(labels.device)[labels])
        parts = {"label_loss": loss.detach()}
        if logits is not None:
            kl = self.kl_weight * self._divergence(model, inputs, logits)
            parts["kl"] = kl.detach() / self.kl_weight
            loss = loss + kl
        if model.training:
            for name, value in parts.items():
                self._parts[name].append(float(value))
        return (loss, {"label_logits": label_logits}) if return_outputs else loss

    def _divergence(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], logits: torch.Tensor
    ) -> torch.Tensor:
        # The reference is the same network with the adapters switched off, so no second
        # copy of the base model is kept in memory; unwrapped, because DDP only wraps forward.
        peft_model = self.accelerator.unwrap_model(model)
        with torch.no_grad(), peft_model.disable_adapter():
            base_logits = peft_model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                position_ids=inputs["position_ids"],
                use_cache=False,
            ).logits
        return divergence(logits, base_logits, inputs["prefix_mask"], kind=self.kl_type)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds the mean label loss and divergence since the last log to a training log,
        averaged over every process (the global batch), so a DDP run's curve reads like a
        single process's."""
        if "loss" in logs:
            for name, values in self._parts.items():
                if values:
                    mean = torch.tensor(float(np.mean(values)), device=self.args.device)
                    logs[name] = float(self.accelerator.reduce(mean, reduction="mean"))
                values.clear()
        super().log(logs, start_time)
