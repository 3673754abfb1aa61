from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from service.api.deps import StateDep
from service.api.protocol import AdapterInfo, HealthResponse
from service.errors import EngineDeadError
from service.serving.lifecycle import Phase

router = APIRouter()
RETRY_AFTER_S = "5"


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def health(state: StateDep) -> JSONResponse:
    """Liveness: 200 while starting (until CONFIDENCE_STARTUP_TIMEOUT_S) or serving; 503 once the
    engine is dead or wedged (see service/serving/watchdog.py) or start-up ran out of time."""
    if state.phase is Phase.failed:
        return JSONResponse(HealthResponse(status="dead", detail=state.detail).model_dump(), status_code=503)
    if state.engine is not None:
        try:
            await state.engine.check_health()
        except EngineDeadError as exc:
            return JSONResponse(
                HealthResponse(status="dead", detail=exc.message).model_dump(), status_code=503
            )
    return JSONResponse(HealthResponse(status=state.phase.value).model_dump())


@router.get("/ready", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
async def ready(state: StateDep) -> JSONResponse:
    """Readiness: 200 once the engine is warm (base and every adapter path ran once)."""
    if state.phase is not Phase.ready or state.service is None:
        waiting = HealthResponse(status=state.phase.value, detail=state.detail)
        return JSONResponse(waiting.model_dump(), status_code=503, headers={"Retry-After": RETRY_AFTER_S})
    adapters = [AdapterInfo(name=a.name, version=a.version) for a in state.service.registry.list()]
    body = HealthResponse(status="ready", model=state.service.engine.model_path, adapters=adapters)
    return JSONResponse(body.model_dump())
