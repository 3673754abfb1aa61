"""Label-free drift: how far recent confidences have moved from an adapter's reference.

The training job stores a histogram of the adapter's confidences on held-out data in its
manifest. When live traffic stops resembling that data, the confidence distribution moves
before anyone has labelled a single answer; the population stability index (PSI) of the
recent window against the reference measures by how much. Usual reading: < 0.1 stable,
0.1-0.2 moderate shift, >= 0.2 a shift worth investigating.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence

from service.lora.manifest import ReferenceHistogram

# An empty bin would make ln(a / e) infinite: fractions are floored at this value (the
# usual PSI convention), which caps one empty bin's contribution at a few units.
PSI_FLOOR = 1e-4


def psi(actual: Sequence[float], expected: Sequence[float], *, floor: float = PSI_FLOOR) -> float:
    """Population stability index sum((a - e) * ln(a / e)) of two histograms over the same
    bins (counts or fractions; each is normalized). 0 for identical distributions.

    Raises:
        ValueError: different numbers of bins, a negative count, or an empty histogram.
    """
    if len(actual) != len(expected):
        raise ValueError(f"histograms differ in bins: {len(actual)} vs {len(expected)}")
    if min(*actual, *expected) < 0:
        raise ValueError("histogram counts must be non-negative")
    total_a, total_e = sum(actual), sum(expected)
    if total_a <= 0 or total_e <= 0:
        raise ValueError("histograms must not be empty")
    out = 0.0
    for a_count, e_count in zip(actual, expected, strict=True):
        a = max(a_count / total_a, floor)
        e = max(e_count / total_e, floor)
        out += (a - e) * math.log(a / e)
    return out


class DriftWindow:
    """The last `size` confidences of one adapter version, binned like its reference."""

    def __init__(self, reference: ReferenceHistogram, *, size: int) -> None:
        edges = reference.bin_edges
        if len(edges) != len(reference.counts) + 1 or sorted(edges) != edges:
            raise ValueError("reference histogram needs ascending bin_edges, one more than counts")
        self.reference = reference
        self._inner_edges = edges[1:-1]
        self._bins: deque[int] = deque(maxlen=size)
        self.counts = [0] * len(reference.counts)

    def bin_of(self, confidence: float) -> int:
        """numpy.histogram's convention: half-open bins, the last one closed."""
        return bisect.bisect_right(self._inner_edges, confidence)

    def add(self, confidence: float) -> None:
        if len(self._bins) == self._bins.maxlen:
            self.counts[self._bins[0]] -= 1
        index = self.bin_of(confidence)
        self._bins.append(index)
        self.counts[index] += 1

    @property
    def samples(self) -> int:
        return len(self._bins)

    def psi(self) -> float | None:
        """PSI of the window against the reference; None while the window is empty."""
        if not self._bins:
            return None
        return psi(self.counts, self.reference.counts)
