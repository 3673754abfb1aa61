"""Per-request time limit (`CONFIDENCE_REQUEST_TIMEOUT_S`).

A request that runs too long is cancelled, not merely answered: cancellation closes its
vLLM `generate()` streams, which aborts the engine requests, so the server does not keep
computing answers nobody waits for. The client gets a 504 that says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from service.errors import RequestTimeoutError

T = TypeVar("T")


class Deadline:
    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s

    async def within(self, work: Awaitable[T]) -> T:
        """Await `work`, or cancel it and raise RequestTimeoutError after `timeout_s`."""
        if self.timeout_s is None:
            return await work
        try:
            return await asyncio.wait_for(work, self.timeout_s)
        except asyncio.TimeoutError as exc:
            raise RequestTimeoutError(
                f"request took longer than this server's limit of {self.timeout_s:g} s and was aborted"
            ) from exc
