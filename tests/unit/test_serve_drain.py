"""`confidence serve` on SIGTERM: stop accepting, finish what is in flight, exit 0.

The real CLI runs in a subprocess; only the engine is swapped for a fake one whose
generation takes a known time, so a request is provably in flight when the signal lands.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import wait_ready
from tests.http_server import free_port

REPO = Path(__file__).resolve().parents[2]
SLOW_SERVER = """
import asyncio, sys
import service.serving.lifecycle as lifecycle
from service.cli import main
from tests.fake_engine import FakeEngine

class SlowEngine(FakeEngine):
    warmed = False

    async def generate(self, prompt_ids, options, *, lora=None):
        if self.warmed:  # the start-up warm-up is quick; requests after it are slow
            await asyncio.sleep(float(sys.argv[1]))
        self.warmed = True
        return await super().generate(prompt_ids, options, lora=lora)

lifecycle.resolve_model = lambda settings: "fake-model"
lifecycle.make_engine = lambda settings, model: SlowEngine()
sys.exit(main(["serve"]))
"""


class Served:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.proc, self.port, self.log = proc, port, log
        self.url = f"http://127.0.0.1:{port}"

    def accepts_connections(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def exit_code(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def serve(adapter_root: Path, tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*, generate_s: float, drain_timeout_s: float) -> Served:
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "CONFIDENCE_PORT": str(port),
            "CONFIDENCE_ADAPTER_ROOT": str(adapter_root),
            "CONFIDENCE_DEFAULT_ADAPTER": "default-unc",
            "CONFIDENCE_DRAIN_TIMEOUT_S": str(drain_timeout_s),
            "CONFIDENCE_DEFAULT_MAX_TOKENS": "4",
        }
        log = tmp_path / f"serve-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-c", SLOW_SERVER, str(generate_s)],
                env=env,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        served = Served(proc, port, log)
        wait_ready(served.url, proc, log)
        return served

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def post_in_background(url: str) -> tuple[threading.Thread, dict[str, object]]:
    result: dict[str, object] = {}

    def call() -> None:
        try:
            result["response"] = httpx.post(f"{url}/generate", json={"prompt": "What is 2 + 2?"}, timeout=30)
        except httpx.HTTPError as exc:
            result["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    return thread, result


def test_sigterm_drains_in_flight_requests_then_exits_0(serve) -> None:
    served = serve(generate_s=3.0, drain_timeout_s=30)
    thread, result = post_in_background(served.url)
    time.sleep(1.0)  # the request is now inside the engine
    started = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    # New connections are refused at once, while the old request is still running.
    deadline = time.monotonic() + 1.5
    while served.accepts_connections() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not served.accepts_connections()
    assert thread.is_alive()
    thread.join(timeout=30)
    response = result.get("response")
    assert isinstance(response, httpx.Response) and response.status_code == 200, result
    assert response.json()["method"] == "adapter"
    assert served.exit_code(timeout=30) == 0, served.log.read_text()
    assert time.monotonic() - started >= 1.5  # it waited for the request
    assert "drained after signal" in served.log.read_text()


def test_drain_timeout_bounds_the_wait(serve) -> None:
    served = serve(generate_s=20.0, drain_timeout_s=1.0)
    thread, result = post_in_background(served.url)
    time.sleep(1.0)
    started = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    assert served.exit_code(timeout=15) == 0, served.log.read_text()
    assert time.monotonic() - started < 10  # not the 20 s the request would have taken
    thread.join(timeout=15)
    response = result.get("response")
    assert "error" in result or (isinstance(response, httpx.Response) and response.status_code != 200)
