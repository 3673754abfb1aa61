"""Thresholds for `target_error_rate`, per adapter version and method, cached until labels arrive.

The labels come from the outcome store (live feedback on what this version served) once there
are `min_live_labels` of them; before that from the labelled split recorded in the version's
manifest (`calibration_outcomes`), when the version has one. The math is
service.calibration.risk; this module only picks the data and caches the result, including a
refusal, so a client repeating a request that cannot be served does not re-read the store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from service.api.protocol import Method, Selection
from service.calibration import risk
from service.errors import FeedbackStoreError, NotEnoughLabelsError
from service.feedback.store import Outcome, OutcomeStore
from service.lora.registry import LoadedAdapter

log = logging.getLogger(__name__)

CACHE_SIZE = 256  # targets are client-chosen floats: bound what they can make us keep


@dataclass(frozen=True)
class Labelled:
    """Confidences and outcomes one threshold rests on, and where they came from."""

    source: Literal["outcome_store", "calibration_split"]
    p: np.ndarray
    y: np.ndarray
    why: str  # for a refusal: what was (not) available


VersionKey = tuple[str | None, str | None, str]  # adapter, version, method


@dataclass(frozen=True)
class _Cached:
    generation: int  # of the version's labels when computed
    expires_at: float
    result: Selection | NotEnoughLabelsError


class ThresholdBook:
    def __init__(
        self,
        store: OutcomeStore,
        adapters: Callable[[], Iterable[LoadedAdapter]],
        *,
        delta: float,
        min_live_labels: int,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.adapters = adapters
        self.delta = delta
        self.min_live_labels = min_live_labels
        # Labels sent to another replica do not pass through this one: recompute after ttl_s
        # even when none arrived here.
        self.ttl_s = ttl_s
        self.clock = clock
        self._generation: defaultdict[VersionKey, int] = defaultdict(int)
        self._cache: OrderedDict[tuple[VersionKey, float], _Cached] = OrderedDict()
        self._locks: defaultdict[VersionKey, asyncio.Lock] = defaultdict(asyncio.Lock)

    def labels_arrived(self, outcome: Outcome) -> None:
        """A new label for this version and method: its thresholds are recomputed on next use."""
        self._generation[(outcome.adapter, outcome.adapter_version, outcome.method)] += 1

    async def selection(
        self, adapter: str | None, version: str | None, method: Method, target: float
    ) -> Selection:
        """The threshold for `target` on this adapter version and method.

        Raises:
            NotEnoughLabelsError: no threshold meets the target with the labels available.
            FeedbackStoreError: the store is down and the version recorded no calibration split.
        """
        version_key: VersionKey = (adapter, version, method.value)
        key = (version_key, target)
        async with self._locks[version_key]:  # one recomputation per version, not one per request
            generation = self._generation[version_key]
            cached = self._cache.get(key)
            if cached is None or cached.generation != generation or self.clock() >= cached.expires_at:
                result = await asyncio.to_thread(self._compute, adapter, version, method, target)
                cached = self._cache[key] = _Cached(generation, self.clock() + self.ttl_s, result)
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(key)
        result = cached.result
        if isinstance(result, NotEnoughLabelsError):
            raise result
        return result

    def thresholds(self, adapter: str | None, version: str | None, method: Method) -> list[float]:
        """Thresholds currently chosen for this version and method (for any target)."""
        version_key: VersionKey = (adapter, version, method.value)
        return sorted(
            {
                entry.result.threshold
                for (k, _), entry in list(self._cache.items())
                if k == version_key and isinstance(entry.result, Selection)
            }
        )

    def _compute(
        self, adapter: str | None, version: str | None, method: Method, target: float
    ) -> Selection | NotEnoughLabelsError:
        labelled = self.labelled(adapter, version, method)
        try:
            if labelled.p.size == 0:
                raise risk.NotEnoughLabelsError(
                    "no labels",
                    n_labels=0,
                    needed=risk.labels_needed(None, None, target=target, delta=self.delta),
                )
            choice = risk.choose_threshold(labelled.p, labelled.y, target=target, delta=self.delta)
        except risk.NotEnoughLabelsError as exc:
            needed = (
                f"about {exc.needed} labelled items would be needed"
                if exc.needed
                else ("more labels would not help: the observed error rate is above the target")
            )
            return NotEnoughLabelsError(
                f"no threshold keeps the error rate among answered items <= {target} (delta={self.delta}) "
                f"for {_spec(adapter, version, method)}: {labelled.why}; {needed}",
                labels=exc.n_labels,
                labels_needed=exc.needed,
                param="target_error_rate",
            )
        return Selection(
            threshold=choice.threshold,
            source=labelled.source,
            target_error_rate=target,
            delta=self.delta,
            expected_coverage=choice.coverage,
            n_labels=choice.n_labels,
            risk_upper_bound=choice.risk_upper_bound,
        )

    def labelled(self, adapter: str | None, version: str | None, method: Method) -> Labelled:
        """Live labels when there are enough, else the recorded calibration split, else
        whatever live labels there are (the refusal then says what is missing)."""
        split = self._calibration_split(adapter, version) if method is Method.adapter else None
        try:
            rows = self.store.outcomes(adapter=adapter, version=version, method=method.value)
        except FeedbackStoreError:
            if split is None:
                raise
            log.warning(
                "outcome store unavailable: thresholds of %s@%s from its calibration split", adapter, version
            )
            return split
        live = Labelled(
            "outcome_store",
            np.array([r.confidence for r in rows], dtype=np.float64),
            np.array([float(bool(r.correct)) for r in rows], dtype=np.float64),
            f"{len(rows)} live labels and "
            + (
                "no calibration split recorded with the version" if split is None else "its calibration split"
            ),
        )
        if len(rows) >= self.min_live_labels or split is None:
            return live
        return split

    def _calibration_split(self, adapter: str | None, version: str | None) -> Labelled | None:
        from scipy.special import expit

        for served in self.adapters():
            if (served.name, served.version) == (adapter, version):
                outcomes = served.manifest.calibration_outcomes
                if outcomes is None or not outcomes.gaps:
                    return None
                p = expit(np.asarray(outcomes.gaps, dtype=np.float64) / served.temperature)
                y = np.asarray(outcomes.correct, dtype=np.float64)
                why = f"the version's calibration split ({outcomes.split}, {len(outcomes.gaps)} items)"
                return Labelled("calibration_split", p, y, why)
        return None


def _spec(adapter: str | None, version: str | None, method: Method) -> str:
    return f"method {method.value}" + (f" of adapter {adapter}@{version}" if adapter else "")
