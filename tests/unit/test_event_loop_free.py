"""The event loop keeps answering while requests carry huge or slow-to-tokenize input:
tokenizing runs on worker threads, and text that cannot fit the model's context is refused
by a character count first (the issue's reproduction: three concurrent 4 MB bodies made
/health take 4.9 s)."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from service.app import build_app
from service.settings import Settings
from tests.fake_engine import FakeEngine, WordTokenizer
from tests.http_server import free_port, serve_in_thread, wait_ready

ROOT = Path(__file__).resolve().parents[2]


class SlowTokenizer(WordTokenizer):
    """Tokenizing costs time in proportion to the text, plus a fixed part, as a real one does."""

    def encode(self, text: str, add_special_tokens: bool = True, **kwargs: Any) -> list[int]:
        time.sleep(0.2 + len(text) / 1e6)
        return super().encode(text, add_special_tokens, **kwargs)


def slow_engine() -> FakeEngine:
    engine = FakeEngine()
    engine._tokenizer = SlowTokenizer()
    return engine


SERVE = """
import sys, uvicorn
from service.app import build_app
from service.settings import Settings
from tests.unit.test_event_loop_free import slow_engine
settings = Settings.model_validate_json(sys.argv[1])
app = build_app(settings, engine=slow_engine())
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


@contextmanager
def serve_in_process(settings: Settings) -> Iterator[str]:
    """The app on the slow fake engine in its own process, so that the measuring client
    does not share the server's interpreter lock (as a real client never does)."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-c", SERVE, settings.model_dump_json(), str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, alive=lambda: server.poll() is None, timeout=60)
        yield url
    finally:
        server.terminate()
        server.wait(60)


def health_p99_during(url: str, load: Callable[[], list[tuple[int, dict]]]) -> tuple[float, list]:
    """/health latencies (seconds) sampled while `load` runs; returns (p99, load's responses)."""
    samples: list[float] = []
    done = threading.Event()

    def probe() -> None:
        with httpx.Client(base_url=url, timeout=30.0) as http:
            while not done.is_set():
                start = time.perf_counter()
                assert http.get("/health").status_code == 200
                samples.append(time.perf_counter() - start)
                time.sleep(0.005)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        responses = load()
    finally:
        done.set()
        prober.join(60)
    assert len(samples) >= 5, samples
    p99 = statistics.quantiles(samples, n=100, method="inclusive")[98]
    return p99, responses


LOAD = """
import json, sys, httpx
from concurrent.futures import ThreadPoolExecutor
url, rounds = sys.argv[1], int(sys.argv[2])
bodies = [json.dumps(b).encode() for b in json.loads(sys.stdin.read())]
def post(content):
    headers = {"content-type": "application/json"}
    r = httpx.post(url + "/generate", content=content, headers=headers, timeout=60)
    return [r.status_code, r.json()]
with ThreadPoolExecutor(len(bodies)) as pool:
    print(json.dumps([answer for _ in range(rounds) for answer in pool.map(post, bodies)]))
"""


def concurrently(url: str, bodies: list[dict], *, rounds: int = 1) -> Callable[[], list[tuple[int, dict]]]:
    """Send the bodies at once, `rounds` times over, from another process (so the /health
    probe's own latency does not include this client's work); returns (status, body) pairs."""

    def run() -> list[tuple[int, dict]]:
        result = subprocess.run(
            [sys.executable, "-c", LOAD, url, str(rounds)],
            input=json.dumps(bodies),
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return [(status, body) for status, body in json.loads(result.stdout)]

    return run


def test_health_stays_fast_under_three_4mb_bodies(settings):
    # The old default body limit, so the bodies are read and parsed as in the reproduction.
    settings = settings.model_copy(update={"max_body_bytes": 4 << 20})
    body = {"messages": [{"role": "user", "content": "x" * 199_000} for _ in range(20)]}
    with serve_in_process(settings) as url:
        p99, responses = health_p99_during(url, concurrently(url, [body] * 3, rounds=15))
    print(f"/health p99 under three concurrent 4 MB bodies: {p99 * 1000:.1f} ms")
    for status, answer in responses:
        assert status == 400, answer
        error = answer["error"]
        assert error["param"] == "messages" and "at most" in error["message"], error
    assert p99 < 0.2


def test_health_stays_fast_while_prompts_tokenize(settings):
    body = {"prompt": " ".join(f"word{i}" for i in range(50))}
    with serve_in_process(settings) as url:
        p99, responses = health_p99_during(url, concurrently(url, [body] * 3))
    print(f"/health p99 while three prompts tokenize: {p99 * 1000:.1f} ms")
    assert all(status == 200 for status, _ in responses), responses
    assert p99 < 0.2


def test_too_many_messages_is_a_400_naming_the_limit(client):
    messages = [{"role": "user", "content": "hi"}] * 129
    response = client.post("/generate", json={"messages": messages})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "messages"
    assert "128" in response.json()["error"]["message"]


def test_the_default_body_limit_follows_the_context(settings, engine):
    big = settings.model_copy(update={"max_model_len": 8192})
    assert big.body_limit() == 8192 * 512
    assert settings.body_limit() == 1 << 20
    with serve_in_thread(build_app(settings, engine=engine)) as url:
        response = httpx.post(f"{url}/generate", content=b"x" * ((1 << 20) + 1), timeout=10.0)
    assert response.status_code == 413
    assert "CONFIDENCE_MAX_BODY_BYTES" in response.json()["error"]["message"]


def test_openai_chat_messages_are_capped_too(client):
    body = {"model": "fake-model", "messages": [{"role": "user", "content": "hi"}] * 129}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert "128" in response.text
