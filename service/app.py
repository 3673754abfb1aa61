"""`build_app(settings)`: the FastAPI application around one engine."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from service.api import error_mapping, middleware
from service.api.deps import SingleValuedQuery, identify_client
from service.api.metrics_port import MetricsPort
from service.api.openai import api_router as openai_api
from service.api.routes import adapter_admin, decisions, feedback, generate, health, monitoring, score
from service.decisions.selective import selective_for
from service.decisions.shadow import ShadowPolicy
from service.engine.base import Engine
from service.monitoring.monitor import monitor_for
from service.monitoring.prometheus import RequestMetricsMiddleware
from service.serving.admission import Admission
from service.serving.deadline import Deadline
from service.serving.lifecycle import Phase, ServiceState, start_service
from service.serving.watchdog import Canary, watch_engine
from service.settings import Settings

log = logging.getLogger(__name__)


async def _start(
    app: FastAPI, settings: Settings, engine: Engine | None, on_fatal: Callable[[], None]
) -> None:
    state: ServiceState = app.state.service_state
    try:
        # A start that hangs (a stuck download, a device that never answers) must end too:
        # past the deadline /health turns 503 and the orchestrator restarts the process.
        started = start_service(settings, engine)
        state.engine, state.service, state.ops = await asyncio.wait_for(
            started, settings.startup_timeout_s or None
        )
    except asyncio.TimeoutError:
        log.critical("start-up did not finish within %g s", settings.startup_timeout_s)
        state.phase = Phase.failed
        state.detail = f"start-up did not finish within {settings.startup_timeout_s:g} s"
        on_fatal()
        return
    except Exception as exc:  # any start-up failure is fatal: report it, do not lose it
        log.exception("start-up failed")
        state.phase, state.detail = Phase.failed, f"start-up failed: {type(exc).__name__}: {exc}"
        on_fatal()
        return
    assert state.engine is not None and state.service is not None
    state.service.shadow_policy = app.state.shadow
    state.service.shadow_sink = app.state.monitor.record_shadow
    state.phase = Phase.ready
    log.info("ready: serving %s", state.engine.model_path)
    canary = Canary(
        interval_s=settings.watchdog_canary_interval_s,
        timeout_s=settings.watchdog_canary_timeout_s,
        failures=settings.watchdog_canary_failures,
    )
    await watch_engine(state, on_fatal, interval_s=settings.watchdog_interval_s, canary=canary)


def build_app(
    settings: Settings, *, engine: Engine | None = None, on_fatal: Callable[[], None] = lambda: None
) -> FastAPI:
    """The service app. `engine=None` builds the real vLLM engine from `settings` at start-up;
    tests pass a `FakeEngine`. `on_fatal` is called if start-up fails or the engine dies later
    (the CLI stops the server and exits non-zero)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(_start(app, settings, engine, on_fatal))
        app.state.service_state.tasks.add(task)
        retention = asyncio.create_task(app.state.monitor.run_retention())
        try:
            yield
        finally:
            task.cancel()
            retention.cancel()
            app.state.monitor.close()
            if app.state.service_state.engine is not None:
                app.state.service_state.engine.shutdown()
            if app.state.service_state.service is not None:
                app.state.service_state.service.registry.close()

    app = FastAPI(
        title="Calibrated-confidence LLM service",
        description="Answers with a calibrated probability of being correct (Kapoor et al. 2024).",
        version="0.1.0",
        lifespan=lifespan,
        # No query parameter of this API takes several values: a repeated one is a 400.
        dependencies=[Depends(identify_client), SingleValuedQuery],
    )
    app.state.settings = settings
    app.state.service_state = ServiceState()
    app.state.admission = Admission(settings.max_inflight_sequences)
    app.state.deadline = Deadline(settings.request_timeout_s or None)
    app.state.monitor = monitor_for(settings, app.state.service_state, app.state.admission)
    app.state.selective = selective_for(settings, app.state.monitor)
    app.state.shadow = ShadowPolicy()
    # Added first, so it runs inside the metrics middleware: its 413s and the 499 it reports
    # for departed clients are counted like any other response.
    middleware.install(app, max_body_bytes=settings.body_limit())
    app.add_middleware(
        RequestMetricsMiddleware,
        metrics=app.state.monitor.metrics,
        adapter_label=app.state.monitor.adapter_label,
    )
    error_mapping.install(app)
    if settings.metrics_port is not None:
        app.add_middleware(MetricsPort, metrics_port=settings.metrics_port)
    for module in (generate, score, adapter_admin, health, feedback, monitoring, openai_api, decisions):
        app.include_router(module.router)
    return app
