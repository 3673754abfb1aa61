from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import MonitorDep, StateDep
from service.api.protocol import CalibrationQuery, CalibrationResponse, ErrorResponse
from service.serving.lifecycle import Phase

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(state: StateDep, monitor: MonitorDep) -> Response:
    """Prometheus text format; see deploy/prometheus/ for the rules built on it."""
    await monitor.refresh(state.engine, ready=state.phase is Phase.ready)
    return Response(generate_latest(monitor.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/calibration",
    response_model=CalibrationResponse,
    responses={400: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)
async def calibration(
    query: Annotated[CalibrationQuery, Query()], monitor: MonitorDep
) -> CalibrationResponse:
    """Reliability table, ECE, Brier and AUROC of the feedback received in `window`
    (computed in this process from the outcome store)."""
    return await monitor.calibration(query)
