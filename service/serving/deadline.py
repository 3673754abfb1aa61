"""Per-request time limit (`CONFIDENCE_REQUEST_TIMEOUT_S`).

A request that runs too long is cancelled, not merely answered: cancellation closes its
vLLM `generate()` streams, which aborts the engine requests, so the server does not keep
computing answers nobody waits for. The client gets a 504 that says so.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable
from contextlib import aclosing
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
            raise self._expired() from exc

    async def stream(self, events: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
        """Pass `events` on until `timeout_s` after the first is asked for, then close them
        (aborting their engine work) and raise RequestTimeoutError."""
        async with aclosing(events):
            if self.timeout_s is None:
                async for event in events:
                    yield event
                return
            end = asyncio.get_running_loop().time() + self.timeout_s
            while True:
                try:
                    async with asyncio.timeout_at(end):
                        event = await anext(events)
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    raise self._expired() from exc
                yield event

    def _expired(self) -> RequestTimeoutError:
        return RequestTimeoutError(
            f"request took longer than this server's limit of {self.timeout_s:g} s and was aborted"
        )
