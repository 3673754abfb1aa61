"""With CONFIDENCE_METRICS_PORT, /metrics is served on that port only, and nothing else is:
one uvicorn server, two listeners, as `confidence serve` runs them."""

from __future__ import annotations

import threading

import httpx
import uvicorn

from service.app import build_app
from tests.http_server import free_port, wait_ready


def test_metrics_only_on_the_metrics_port(settings, engine):
    api_port, metrics_port = free_port(), free_port()
    settings = settings.model_copy(update={"metrics_port": metrics_port})
    app = build_app(settings, engine=engine)
    config = uvicorn.Config(app, host="127.0.0.1", port=api_port, log_level="warning")
    sockets = [config.bind_socket(), uvicorn.Config(app, host="127.0.0.1", port=metrics_port).bind_socket()]
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": sockets}, daemon=True)
    thread.start()
    api, metrics = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{metrics_port}"
    try:
        wait_ready(api, alive=thread.is_alive, timeout=20)
        assert httpx.post(f"{api}/generate", json={"prompt": "2+2?"}, timeout=10).status_code == 200
        assert httpx.get(f"{api}/metrics", timeout=10).status_code == 404
        scraped = httpx.get(f"{metrics}/metrics", timeout=10)
        assert scraped.status_code == 200 and "confidence_requests" in scraped.text
        for path in ("/generate", "/feedback", "/admin/adapters", "/health"):
            assert (
                httpx.request(
                    "POST" if path != "/health" else "GET", f"{metrics}{path}", timeout=10
                ).status_code
                == 404
            )
    finally:
        server.should_exit = True
        thread.join(30)
