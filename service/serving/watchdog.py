"""Engine watchdog: a dead or wedged engine takes the process down, so the orchestrator
restarts it.

vLLM's engine core runs in a child process. If it dies at runtime (killed, out of
memory, a crash in a kernel), every request fails with 503 from then on, but the HTTP
server itself would stay up and look alive to anything that only checks the process.
An engine can also wedge without dying (a hung collective, a stuck scheduler): every
request then times out while `check_health()` still passes. So the watchdog does two
things: it polls `engine.check_health()`, and every `canary_interval_s` it makes one tiny
real read (a single next-token log-probability); when `canary_failures` reads in a row take
longer than `canary_timeout_s` while the engine hands back nothing for any other request
either, the engine is making no progress. Either way it marks the service failed (so
`/health` answers 503 and says why) and calls `on_fatal`, which stops the server with a
non-zero exit code.

A slow canary alone is not a wedge: under a legitimate backlog (32 clients each scoring 16
items on a 2-core CPU keeps a minute of work queued) the canary waits its turn like every
request, and killing the server then would turn overload, which admission control answers
with 429/503 + Retry-After, into an outage. So a slow read counts only when the engine's
`progress` did not move since the previous canary finished.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from service.errors import EngineDeadError
from service.serving.lifecycle import Phase, ServiceState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Canary:
    interval_s: float = 30.0
    timeout_s: float = 60.0
    failures: int = 2  # in a row: one slow read under a burst of load is not a wedge


def _fail(state: ServiceState, on_fatal: Callable[[], None], detail: str) -> None:
    log.critical("%s; stopping the server", detail)
    state.phase, state.detail = Phase.failed, detail
    on_fatal()


async def _canary_read(state: ServiceState) -> None:
    service = state.service
    assert service is not None
    await service.engine.next_token_logprobs([service.labels.no_id], [service.labels.no_id])


async def watch_engine(
    state: ServiceState,
    on_fatal: Callable[[], None],
    *,
    interval_s: float,
    canary: Canary | None = None,
) -> None:
    """Return (after calling `on_fatal`) once the engine is dead or wedged; runs until
    cancelled otherwise."""
    assert state.engine is not None
    canary = canary or Canary()
    next_canary = time.monotonic() + canary.interval_s
    slow = 0
    mark = state.engine.progress
    while True:
        await asyncio.sleep(interval_s)
        try:
            await state.engine.check_health()
        except EngineDeadError as exc:
            _fail(state, on_fatal, f"the model engine died: {exc.message}")
            return
        if state.service is None or time.monotonic() < next_canary:
            continue
        try:
            await asyncio.wait_for(_canary_read(state), canary.timeout_s)
            slow = 0
        except asyncio.TimeoutError:
            progress = state.engine.progress
            if progress is not None and progress != mark:
                # Busy, not wedged: other requests got output meanwhile.
                log.info("engine canary read took over %g s, but the engine is serving", canary.timeout_s)
                slow = 0
            else:
                slow += 1
                log.warning("engine canary read took over %g s (%d in a row)", canary.timeout_s, slow)
            if slow >= canary.failures:
                _fail(
                    state,
                    on_fatal,
                    f"the model engine makes no progress: {slow} canary reads in a row took over "
                    f"{canary.timeout_s:g} s",
                )
                return
        except EngineDeadError as exc:
            _fail(state, on_fatal, f"the model engine died: {exc.message}")
            return
        mark = state.engine.progress
        next_canary = time.monotonic() + canary.interval_s
