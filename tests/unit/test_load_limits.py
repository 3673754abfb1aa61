"""Request time limit, client disconnects and the engine watchdog, on the fake engine.

Disconnects are tested over real HTTP (uvicorn on loopback): whether a handler is
cancelled when its client leaves depends on the server, not on the ASGI app alone.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient

from service.app import build_app
from service.errors import RequestTimeoutError
from service.serving.deadline import Deadline
from tests.http_server import free_port, serve_in_thread
from tests.unit.conftest import wait_ready


def wait_until(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


async def test_deadline_cancels_the_work_and_raises_a_504_error():
    cancelled = asyncio.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with pytest.raises(RequestTimeoutError) as info:
        await Deadline(0.05).within(slow())
    assert info.value.status_code == 504 and cancelled.is_set()
    assert await Deadline(None).within(asyncio.sleep(0, result=7)) == 7


@pytest.mark.parametrize(
    ("path", "body"),
    [("/generate", {"prompt": "x"}), ("/score", {"items": [{"question": "q", "answer": "a"}] * 3})],
)
def test_request_past_the_time_limit_is_504_and_its_engine_calls_are_aborted(settings, engine, path, body):
    settings = settings.model_copy(update={"request_timeout_s": 0.2})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        engine.latency_s = 30.0
        started = time.monotonic()
        response = client.post(path, json=body)
        assert time.monotonic() - started < 5
        assert response.status_code == 504, response.text
        assert response.json()["error"]["type"] == "request_timeout"
        assert engine.in_flight == 0 and engine.cancelled >= 1
        engine.latency_s = 0.01
        assert client.post(path, json=body).status_code == 200
        assert client.app.state.admission.in_flight == 0  # the slots were given back


@pytest.mark.parametrize(
    ("path", "body"),
    [("/generate", {"prompt": "x"}), ("/score", {"items": [{"question": "q", "answer": "a"}] * 4})],
)
def test_client_disconnect_aborts_the_engine_work(settings, engine, path, body):
    app = build_app(settings, engine=engine)
    with serve_in_thread(app) as url:
        engine.latency_s = 60.0
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{url}{path}", json=body, timeout=0.5)  # gives up and closes the connection
        wait_until(lambda: engine.in_flight == 0, timeout=5)
        assert engine.cancelled >= 1
        assert app.state.admission.in_flight == 0
        # The request metrics call it "client closed request", not a server error.
        wait_until(lambda: requests_by_code(app).get("499") == 1, timeout=5)
        assert "500" not in requests_by_code(app)
        engine.latency_s = 0.01
        response = httpx.post(f"{url}{path}", json=body, timeout=10)
        assert response.status_code == 200  # the server is unharmed


def test_requests_that_finish_are_not_cancelled_by_the_disconnect_watch(settings, engine):
    app = build_app(settings, engine=engine)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(20):  # keep-alive connection reused across requests
            assert client.post("/generate", json={"prompt": "hi"}).status_code == 200
    assert engine.cancelled == 0


def test_watchdog_marks_a_dead_engine_and_stops_the_server(settings, engine):
    """The CLI passes `on_fatal` = stop uvicorn; `confidence serve` then exits with 1."""
    settings = settings.model_copy(update={"watchdog_interval_s": 0.05})
    holder: dict[str, uvicorn.Server] = {}
    fatal = threading.Event()

    def on_fatal() -> None:
        fatal.set()
        holder["server"].should_exit = True

    app = build_app(settings, engine=engine, on_fatal=on_fatal)
    port = free_port()
    server = holder["server"] = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: _status(f"{url}/ready") == 200, timeout=10)
    time.sleep(0.2)
    assert not fatal.is_set()  # a healthy engine is left alone
    engine.dead = True
    thread.join(timeout=10)
    assert fatal.is_set() and not thread.is_alive()
    state = app.state.service_state
    assert state.phase.value == "failed" and "engine died" in state.detail


def test_health_is_503_once_the_watchdog_saw_the_engine_die(settings, engine):
    settings = settings.model_copy(update={"watchdog_interval_s": 0.05})
    with TestClient(build_app(settings, engine=engine)) as client:
        wait_ready(client)
        engine.dead = True
        wait_until(lambda: client.app.state.service_state.phase.value == "failed")
        engine.dead = False  # even if a check would pass again, the service stays failed
        health = client.get("/health")
        assert health.status_code == 503 and "engine died" in health.json()["detail"]
        response = client.post("/generate", json={"prompt": "x"})
        assert response.status_code == 503 and response.json()["error"]["type"] == "engine_dead"


def requests_by_code(app) -> dict[str, float]:
    counts: dict[str, float] = {}
    for metric in app.state.monitor.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "confidence_requests_total":
                code = sample.labels["code"]
                counts[code] = counts.get(code, 0) + sample.value
    return counts


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return None
