"""Child processes the tests start (servers, nginx, dockerd), stopped the same way."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], *, timeout: float = 60) -> None:
    """SIGTERM, give it `timeout` seconds to shut down cleanly, then SIGKILL."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
