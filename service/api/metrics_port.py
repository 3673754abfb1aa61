"""`MetricsPort`: /metrics on its own port, so a network policy can open just that.

A Kubernetes NetworkPolicy filters by port, not by path. With `CONFIDENCE_METRICS_PORT` set,
the server listens on two ports: the API port serves everything but /metrics, the metrics
port serves /metrics only (404 for anything else). The monitoring namespace is then allowed
the metrics port alone and cannot reach /generate, /feedback or the admin API.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.error_mapping import _error

METRICS_PATH = "/metrics"


class MetricsPort:
    def __init__(self, app: ASGIApp, *, metrics_port: int) -> None:
        self.app = app
        self.metrics_port = metrics_port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            server = scope.get("server") or (None, None)
            on_metrics_port = server[1] == self.metrics_port
            if on_metrics_port != (scope["path"] == METRICS_PATH):
                where = "the metrics port" if on_metrics_port else "this port"
                response = _error(404, "not_found", f"{scope['path']} is not served on {where}", None)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
