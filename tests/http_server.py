"""Serve an app with uvicorn on a free loopback port in a thread (real HTTP, real sockets)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import uvicorn
from fastapi import FastAPI


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(url: str, *, alive: Callable[[], bool], timeout: float) -> None:
    """Poll `url`/ready until it answers 200; TimeoutError if `alive()` turns false or
    `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/ready", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline or not alive():
            raise TimeoutError(f"server at {url} not ready after {timeout} s")
        time.sleep(0.1)


@contextmanager
def serve_in_thread(app: FastAPI, *, ready_timeout: float = 10.0) -> Iterator[str]:
    """Yields the base URL once `/ready` is 200; stops the server on exit."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, alive=thread.is_alive, timeout=ready_timeout)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=60)
