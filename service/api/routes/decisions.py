"""Admin routes of the decision features: recalibration reports (metrics), shadow candidates,
and the queue of served responses most worth labelling."""

from __future__ import annotations

from fastapi import APIRouter, Response

from service.api.deps import AdminDep, MonitorDep
from service.api.error_mapping import documented
from service.api.protocol import RecalibrationReport
from service.monitoring.prometheus import UNSERVED

router = APIRouter()


@router.post("/admin/recalibrations", status_code=204, responses=documented(400, 401, 403))
async def recalibration_report(report: RecalibrationReport, monitor: MonitorDep, _: AdminDep) -> Response:
    """Count a recalibration run's outcome (sent by `confidence recalibrate --report/--promote`)."""
    served = {a.name for a in monitor.adapters()}
    adapter = report.adapter if report.adapter in served else UNSERVED  # bounded label values
    monitor.metrics.recalibrations.labels(adapter, report.outcome).inc()
    for role, ece in (("current", report.current_ece), ("candidate", report.candidate_ece)):
        if ece is not None:
            monitor.metrics.recalibration_ece.labels(adapter, role).set(ece)
    return Response(status_code=204)
