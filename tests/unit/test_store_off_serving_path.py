"""Serving never waits on the outcome store: with the SQLite file locked by another process,
or the PostgreSQL server paused (SIGSTOP: it accepts connections but never answers), /generate
and /score answer in their normal time, while /feedback answers 503 within its bound and
acknowledges nothing it did not commit."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from service.app import build_app
from tests.http_server import serve_in_thread
from tests.postgres import paused, postgres_server

STORE_TIMEOUT_S = 1.0


def latencies(url: str, rounds: int = 4) -> list[float]:
    """Seconds per /generate and /score call (a hung call fails the test at 4 s)."""
    taken = []
    with httpx.Client(base_url=url, timeout=4.0) as http:
        for i in range(rounds):
            for path, body in (
                ("/generate", {"prompt": f"question {i}?"}),
                ("/score", {"items": [{"question": f"q{i}?", "answer": "a"}] * 3}),
            ):
                start = time.perf_counter()
                response = http.post(path, json=body)
                taken.append(time.perf_counter() - start)
                assert response.status_code == 200, response.text
    return taken


def assert_normal(label: str, baseline: list[float], stalled: list[float]) -> None:
    normal, worst = max(baseline) * 1000, max(stalled) * 1000
    print(f"{label}: normal max {normal:.0f} ms, store stalled max {worst:.0f} ms")
    # Before the fix each answer waited for its record: 5 s per locked SQLite write, forever
    # on a paused PostgreSQL. "Normal" leaves room for a busy test machine.
    assert max(stalled) < 3 * max(baseline) + 0.5


@contextmanager
def sqlite_locked(path: Path) -> Iterator[None]:
    """Another process holds the database's write lock until the block ends."""
    locker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        yield
    finally:
        locker.communicate(timeout=30)  # closing stdin ends it


def feedback(url: str, response_id: str) -> tuple[int, float]:
    start = time.perf_counter()
    with httpx.Client(base_url=url, timeout=30.0) as http:
        response = http.post("/feedback", json={"id": response_id, "correct": True})
    return response.status_code, time.perf_counter() - start


def generate_id(url: str) -> str:
    response = httpx.post(f"{url}/generate", json={"prompt": "2+2?"}, timeout=4.0)
    assert response.status_code == 200
    return str(response.json()["id"])


def test_serving_goes_on_while_another_process_locks_the_sqlite_store(settings, engine):
    settings = settings.model_copy(update={"feedback_store_timeout_s": STORE_TIMEOUT_S})
    app = build_app(settings, engine=engine)
    with serve_in_thread(app) as url:
        baseline = latencies(url)
        labelled_later = generate_id(url)
        assert app.state.monitor.writer.wait_handled(10.0)  # the file and its schema exist
        with sqlite_locked(settings.feedback_db_path):
            stalled = latencies(url)
            status, took = feedback(url, labelled_later)
            assert status == 503 and took < 3 * STORE_TIMEOUT_S + 2
        assert_normal("sqlite locked", baseline, stalled)
        assert feedback(url, labelled_later)[0] == 200  # nothing was acknowledged before


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def test_serving_goes_on_while_postgresql_is_paused(settings, engine, postgres_url):
    settings = settings.model_copy(
        update={"feedback_db_url": postgres_url, "feedback_store_timeout_s": STORE_TIMEOUT_S}
    )
    app = build_app(settings, engine=engine)
    with serve_in_thread(app) as url:
        baseline = latencies(url)
        labelled_later = generate_id(url)
        assert app.state.monitor.writer.wait_handled(10.0)
        with paused(postgres_url):
            stalled = latencies(url)
            status, took = feedback(url, labelled_later)
            assert status == 503 and took < 3 * STORE_TIMEOUT_S + 2
        assert_normal("postgresql paused", baseline, stalled)
        # Once the server runs again, the records queued meanwhile are written and labellable.
        assert app.state.monitor.writer.wait_handled(30.0)
        assert feedback(url, labelled_later)[0] == 200


def test_a_full_record_queue_drops_and_counts_instead_of_waiting(settings, engine):
    settings = settings.model_copy(update={"feedback_queue_size": 1, "feedback_store_timeout_s": 3.0})
    app = build_app(settings, engine=engine)
    with serve_in_thread(app) as url:
        generate_id(url)
        assert app.state.monitor.writer.wait_handled(10.0)
        with sqlite_locked(settings.feedback_db_path):
            stalled = latencies(url, rounds=3)  # the first record blocks the writer, one waits
            assert max(stalled) < 1.0
        assert app.state.monitor.writer.wait_handled(10.0)
    dropped = app.state.monitor.metrics.registry.get_sample_value("confidence_feedback_records_dropped_total")
    assert dropped is not None and dropped >= 4
