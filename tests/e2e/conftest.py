"""The real embedded model served by `confidence serve` in a subprocess, over loopback HTTP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

STARTUP_TIMEOUT_S = 600
# Two reads of one (question, answer) agree only up to bf16 numerics: vLLM is not batch-invariant,
# and a read whose prefix is cached runs other matrix shapes than one that prefills it all. On an
# Intel AVX512-BF16 CPU a plain and a streamed completion's confidences differed by 4.3e-3
# (0.4102 vs 0.4146), where an AMD Zen 5 gave equal numbers. A read with another method moves
# the number by tenths (the README's answer: 0.475 with the head, 0.070 with the adapter).
SAME_READ_ABS = 1e-2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {
        **os.environ,
        "CONFIDENCE_PORT": str(port),
        "CONFIDENCE_HOST": "127.0.0.1",
        "CONFIDENCE_FEEDBACK_DB_PATH": str(log_path.parent / "feedback.sqlite3"),
    }
    env.pop("CONFIDENCE_MODEL", None)  # the embedded default
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, log_path)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def wait_ready(base: str, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    pytest.fail(f"server not ready in {STARTUP_TIMEOUT_S}s:\n{log_path.read_text()[-3000:]}")
