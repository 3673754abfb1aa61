"""Liveness: a start-up that never ends, and an engine that stops making progress while it
still reports healthy, both turn /health into 503 and stop the process (on_fatal)."""

from __future__ import annotations

import asyncio
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
    settings = settings.model_copy(
        update={
            "watchdog_interval_s": 0.05,
            "watchdog_canary_interval_s": 0.05,
            "watchdog_canary_timeout_s": 0.2,
            "watchdog_canary_failures": 2,
        }
    )
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
