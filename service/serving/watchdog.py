"""Engine watchdog: a dead engine takes the process down, so the orchestrator restarts it.

vLLM's engine core runs in a child process. If it dies at runtime (killed, out of
memory, a crash in a kernel), every request fails with 503 from then on, but the HTTP
server itself would stay up and look alive to anything that only checks the process.
The watchdog polls `engine.check_health()` and, on the first failure, marks the service
failed (so `/health` and requests say why) and calls `on_fatal`, which stops the server
with a non-zero exit code.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from service.errors import EngineDeadError
from service.serving.lifecycle import Phase, ServiceState

log = logging.getLogger(__name__)


async def watch_engine(state: ServiceState, on_fatal: Callable[[], None], *, interval_s: float) -> None:
    """Return (after calling `on_fatal`) once the engine is dead; runs until cancelled otherwise."""
    assert state.engine is not None
    while True:
        await asyncio.sleep(interval_s)
        try:
            await state.engine.check_health()
        except EngineDeadError as exc:
            log.critical("the model engine died: %s; stopping the server", exc.message)
            state.phase, state.detail = Phase.failed, f"the model engine died: {exc.message}"
            on_fatal()
            return
