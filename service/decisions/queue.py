"""Which served answers to label next: those whose labels would most improve calibration.

Each unlabelled item gets three scores, summed:

- near a decision threshold: a label there moves the answer/abstain boundary
  (exp(-|confidence - threshold| / 0.05) for the nearest threshold);
- in a confidence bin with few labels: the reliability of a bin with n labels is known to
  about 1/sqrt(n), so each new label there teaches more (1 / sqrt(1 + n));
- in a bin that live traffic fills more than the version's reference histogram did: drifted
  traffic is where the fitted calibration is least trustworthy (log of the share ratio, when
  above 1).
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from service.api.protocol import FeedbackQueueItem
from service.calibration.metrics import bin_index
from service.feedback.store import Outcome
from service.lora.manifest import ReferenceHistogram

N_BINS = 10
NEAR_SCALE = 0.05


def _bins(confidences: list[float]) -> list[int]:
    if not confidences:
        return []
    return [int(b) for b in bin_index(np.asarray(confidences, dtype=np.float64), N_BINS)]


def _drift_by_bin(live: list[int], reference: ReferenceHistogram | None) -> dict[int, float]:
    """log(live share / reference share) per bin where it is positive (equal-width bins only)."""
    if reference is None or len(reference.counts) != N_BINS or not live:
        return {}
    total_ref = sum(reference.counts)
    if total_ref <= 0:
        return {}
    counts = Counter(live)
    out = {}
    for k in range(N_BINS):
        # Add-one smoothing so a bin empty in the reference does not divide by zero.
        ref = (reference.counts[k] + 1) / (total_ref + N_BINS)
        share = (counts.get(k, 0) + 1) / (len(live) + N_BINS)
        if share > ref:
            out[k] = math.log(share / ref)
    return out


def rank(
    unlabelled: list[Outcome],
    labelled: list[Outcome],
    *,
    thresholds: list[float],
    reference: ReferenceHistogram | None,
    limit: int,
) -> list[FeedbackQueueItem]:
    """The `limit` most useful items to label, highest priority first."""
    labelled_per_bin = Counter(_bins([o.confidence for o in labelled]))
    live_bins = _bins([o.confidence for o in unlabelled] + [o.confidence for o in labelled])
    drift = _drift_by_bin(live_bins, reference)
    scored = []
    for outcome, k in zip(unlabelled, _bins([o.confidence for o in unlabelled]), strict=True):
        distance = min(abs(outcome.confidence - t) for t in thresholds)
        parts = {
            f"{distance:.3f} from a decision threshold": math.exp(-distance / NEAR_SCALE),
            f"{labelled_per_bin.get(k, 0)} labels in its confidence bin": 1
            / math.sqrt(1 + labelled_per_bin.get(k, 0)),
        }
        if k in drift:
            parts[f"drifted bin (live/reference share x{math.exp(drift[k]):.2f})"] = drift[k]
        priority = sum(parts.values())
        reasons = [why for why, value in sorted(parts.items(), key=lambda kv: -kv[1]) if value > 0.05]
        scored.append((priority, outcome, reasons))
    scored.sort(key=lambda entry: (-entry[0], -entry[1].served_at))
    return [
        FeedbackQueueItem(
            id=o.response_id,
            index=o.index,
            endpoint=o.endpoint,
            confidence=o.confidence,
            served_at=o.served_at,
            priority=priority,
            reasons=reasons,
            question=o.chat,
            answer=o.answer,
        )
        for priority, o, reasons in scored[:limit]
    ]
