"""Liveness: a start-up that never ends, and an engine that stops making progress while it
still reports healthy, both turn /health into 503 and stop the process (on_fatal)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from fastapi.testclient import TestClient

from service.app import build_app
from tests.fake_engine import FakeEngine
from tests.unit.conftest import wait_ready


class HangingStart(FakeEngine):
    async def start(self) -> None:
        await asyncio.Event().wait()  # a model load that never finishes


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def fast_watchdog(settings):
    """A canary every 50 ms that counts as slow after 200 ms; two slow ones stop the server."""
    return settings.model_copy(
        update={
            "watchdog_interval_s": 0.05,
            "watchdog_canary_interval_s": 0.05,
            "watchdog_canary_timeout_s": 0.2,
            "watchdog_canary_failures": 2,
        }
    )


def test_a_start_past_its_deadline_turns_health_503_and_stops(settings):
    settings = settings.model_copy(update={"startup_timeout_s": 0.5})
    fatal = threading.Event()
    with TestClient(build_app(settings, engine=HangingStart(), on_fatal=fatal.set)) as client:
        assert client.get("/health").json()["status"] == "starting"
        wait_for(fatal.is_set)
        response = client.get("/health")
    assert response.status_code == 503
    assert "start-up did not finish within 0.5 s" in response.json()["detail"]


def test_a_wedged_engine_is_found_by_the_canary(settings):
    settings = fast_watchdog(settings)
    engine, fatal = FakeEngine(), threading.Event()
    with TestClient(build_app(settings, engine=engine, on_fatal=fatal.set)) as client:
        wait_ready(client)
        reads = len(engine.calls)
        wait_for(lambda: len(engine.calls) >= reads + 4)  # canary reads pass while the engine answers
        assert not fatal.is_set() and client.get("/health").status_code == 200
        engine.latency_s = 3600.0  # wedged: check_health() still passes, nothing completes
        wait_for(fatal.is_set)
        response = client.get("/health")
    assert response.status_code == 503
    assert "no progress" in response.json()["detail"]


class QueuedCanary(FakeEngine):
    """The canary (a one-token read) waits behind a backlog while other requests complete:
    what a saturated engine looks like to the watchdog. `stuck` makes it a wedge: nothing
    completes at all."""

    def __init__(self) -> None:
        super().__init__()
        self.stuck = False

    async def next_token_logprobs(self, prompt_ids, token_ids, *, lora=None):
        if len(prompt_ids) == 1:  # the watchdog's canary
            await asyncio.Event().wait()
        return await super().next_token_logprobs(prompt_ids, token_ids, lora=lora)

    async def _enter(self, kind, lora):
        if self.stuck:
            await asyncio.Event().wait()
        await super()._enter(kind, lora)


def test_a_busy_engine_with_slow_canaries_keeps_serving_and_a_wedged_one_stops(settings, caplog):
    settings = fast_watchdog(settings)
    engine, fatal, stop = QueuedCanary(), threading.Event(), threading.Event()
    busy = "but the engine is serving"
    caplog.set_level(logging.INFO, logger="service.serving.watchdog")
    with TestClient(build_app(settings, engine=engine, on_fatal=fatal.set)) as client:
        wait_ready(client)

        def traffic() -> None:
            while not stop.is_set():
                client.post("/score", json={"items": [{"question": "q?", "answer": "a"}]})

        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        try:
            # Four slow canaries in a row (twice the failure count), each while requests complete.
            wait_for(lambda: sum(busy in r.getMessage() for r in caplog.records) >= 4)
            assert not fatal.is_set() and client.get("/health").status_code == 200
        finally:
            stop.set()
            thread.join(timeout=10)
        engine.stuck = True  # now nothing completes: two slow canaries stop the server
        wait_for(fatal.is_set)
        response = client.get("/health")
    assert response.status_code == 503 and "no progress" in response.json()["detail"]
