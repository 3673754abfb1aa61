"""`confidence serve` exits non-zero when its engine dies at runtime (so it gets restarted).

Starts the real CLI on the tiny model in a subprocess, kills that subprocess's own
`VLLM::EngineCore` child (found among its descendants, never by name machine-wide), and
expects the process to exit by itself with a non-zero code, saying why.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from bench.common import REPO, free_port

pytestmark = pytest.mark.integration


def descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def is_engine_core(process: psutil.Process) -> bool:
    try:
        return any("EngineCore" in part for part in [process.name(), *process.cmdline()])
    except psutil.NoSuchProcess:
        return False


def test_engine_core_killed_at_runtime_stops_the_server_with_an_error(
    tiny_model: Path, adapter_root: Path, tmp_path
):
    port = free_port()
    env = {
        **os.environ,
        "CONFIDENCE_MODEL": str(tiny_model),
        "CONFIDENCE_ADAPTER_ROOT": str(adapter_root),
        "CONFIDENCE_DEFAULT_ADAPTER": "alpha",
        "CONFIDENCE_MAX_MODEL_LEN": "512",
        "CONFIDENCE_KV_CACHE_GIB": "0.25",
        "CONFIDENCE_MAX_LORA_RANK": "8",
        "CONFIDENCE_PORT": str(port),
        "CONFIDENCE_WATCHDOG_INTERVAL_S": "0.5",
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "serve"],
            env=env,
            cwd=REPO,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    ours = [psutil.Process(proc.pid)]
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            try:
                if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        ours += descendants(proc.pid)
        cores = [p for p in ours[1:] if is_engine_core(p)]
        assert len(cores) == 1, [p.cmdline() for p in ours]
        cores[0].send_signal(signal.SIGKILL)  # our own server's engine, nothing else
        # /health turning 503 on a dead engine is tested in-process (tests/unit/test_load_limits.py);
        # here the point is that the process does not outlive its engine.
        code = proc.wait(timeout=120)
        output = log_path.read_text()
        assert code != 0, output[-3000:]
        assert "engine died" in output, output[-3000:]
    finally:
        for process in reversed(ours):  # only processes this test started
            with contextlib.suppress(psutil.NoSuchProcess):
                process.kill()
