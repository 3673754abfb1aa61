"""Bounded admission: refuse work beyond a fixed number of in-flight sequences.

vLLM queues without limit; a burst larger than the server can finish in reasonable time
would only grow latency for everyone. Counting admitted sequences (a /score item is one
sequence) and refusing the excess with 429 + Retry-After keeps the queue bounded while
everything admitted still reaches the engine concurrently, to be batched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from service.errors import OverloadedError


class Admission:
    def __init__(self, capacity: int, *, retry_after_s: int = 1) -> None:
        self.capacity = capacity
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    @contextmanager
    def admit(self, sequences: int = 1) -> Iterator[None]:
        """Hold `sequences` slots for the duration of the block, or raise OverloadedError.

        No await happens between the check and the increment, so on one event loop this
        needs no lock.
        """
        if self.in_flight + sequences > self.capacity:
            raise OverloadedError(
                f"server busy: {self.in_flight} sequences in flight (limit {self.capacity}); retry later",
                retry_after_s=self.retry_after_s,
            )
        self.in_flight += sequences
        try:
            yield
        finally:
            self.in_flight -= sequences
