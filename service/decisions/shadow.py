"""Shadow evaluation: a candidate adapter version also scores a fraction of the requests that
the default serves, in the same engine batch; its confidences are recorded, never returned.

The policy only says whether a request is shadowed and by which version; the serving core
reads the confidence and hands the result to a sink (the monitor records it in the outcome
store in the background, so a shadow never delays or fails an answer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class ShadowConfig:
    spec: str  # name@version of the candidate
    fraction: float  # of requests that get the default adapter


@dataclass(frozen=True)
class ShadowRead:
    """What a shadow read for one served response (handed to the sink)."""

    response_id: str
    endpoint: str
    adapter: str
    version: str
    method: str  # the candidate's: the served request's, or `adapter` where it has no head
    confidences: tuple[tuple[int, float], ...]  # (item index, confidence); empty if it failed
    failed: bool = False


class ShadowPolicy:
    """The attached candidate, if any (replaced atomically by the admin API)."""

    def __init__(self, *, seed: int | None = None) -> None:
        self.config: ShadowConfig | None = None
        self._rng = random.Random(seed)

    def pick(self) -> str | None:
        """The candidate to shadow this request with, or None (not attached, or not sampled)."""
        config = self.config
        if config is None or self._rng.random() >= config.fraction:
            return None
        return config.spec
