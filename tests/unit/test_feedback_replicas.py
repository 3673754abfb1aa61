"""Two service instances on one PostgreSQL: contradicting labels for the same item sent to
both at once — exactly one is acknowledged, the other is a 409 (before: both could be)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import httpx
import pytest

from service.app import build_app
from tests.fake_engine import FakeEngine
from tests.http_server import serve_in_thread
from tests.postgres import postgres_server

ROUNDS = 20


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    with postgres_server() as url:
        yield url


def test_contradicting_labels_on_two_replicas_exactly_one_wins(settings, postgres_url):
    settings = settings.model_copy(update={"feedback_db_url": postgres_url, "max_score_items": ROUNDS})
    first, second = build_app(settings, engine=FakeEngine()), build_app(settings, engine=FakeEngine())
    with serve_in_thread(first) as url_a, serve_in_thread(second) as url_b:
        items = [{"question": f"q{i}?", "answer": "a"} for i in range(ROUNDS)]
        scored = httpx.post(f"{url_a}/score", json={"items": items}, timeout=10).json()
        assert first.state.monitor.writer.wait_handled(10.0)
        outcomes = []
        for index in range(ROUNDS):
            start = threading.Barrier(2)
            statuses: dict[str, int] = {}

            def label(url: str, correct: bool, index: int = index, statuses=statuses, start=start) -> None:
                body = {"id": scored["id"], "index": index, "correct": correct}
                start.wait()
                statuses[url] = httpx.post(f"{url}/feedback", json=body, timeout=30).status_code

            threads = [
                threading.Thread(target=label, args=(url_a, True)),
                threading.Thread(target=label, args=(url_b, False)),
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            outcomes.append(sorted(statuses.values()))
    assert outcomes == [[200, 409]] * ROUNDS, outcomes
