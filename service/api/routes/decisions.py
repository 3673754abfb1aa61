"""Admin routes of the decision features: recalibration reports (metrics), shadow candidates,
and the queue of served responses most worth labelling."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Query, Response

from service.api.deps import AdminDep, MonitorDep, OpsDep, SelectiveDep, ShadowDep
from service.api.error_mapping import documented
from service.api.protocol import (
    CalibrationQuery,
    FeedbackQueue,
    FeedbackQueueQuery,
    Method,
    RecalibrationReport,
    ShadowComparison,
    ShadowPromoteRequest,
    ShadowRequest,
    ShadowStatus,
)
from service.decisions import queue
from service.decisions.compare import shadow_comparisons
from service.decisions.shadow import ShadowConfig, ShadowPolicy
from service.errors import InvalidRequestError, ShadowConflictError
from service.lora.files import parse_spec
from service.lora.ops import AdapterOps
from service.monitoring.prometheus import UNSERVED
from service.serving.core import method_for

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


def _status(shadow: ShadowPolicy, ops: AdapterOps) -> ShadowStatus:
    default = ops.registry.default_adapter()
    config = shadow.config
    return ShadowStatus(
        adapter=config.spec if config else None,
        fraction=config.fraction if config else None,
        default=default.spec if default else None,
    )


@router.get("/admin/shadow", response_model=ShadowStatus, responses=documented(401, 403, 503))
async def get_shadow(shadow: ShadowDep, ops: OpsDep, _: AdminDep) -> ShadowStatus:
    """The shadow candidate attached to the default adapter, if any."""
    return _status(shadow, ops)


@router.put("/admin/shadow", response_model=ShadowStatus, responses=documented(400, 401, 403, 404, 409, 503))
async def attach_shadow(request: ShadowRequest, shadow: ShadowDep, ops: OpsDep, _: AdminDep) -> ShadowStatus:
    """Attach a loaded version as the default's shadow: `fraction` of the requests that get the
    default are also scored by it (same engine batch), recorded under it, never returned."""
    version = parse_spec(request.adapter)[1]
    if version is None:
        raise InvalidRequestError("name the candidate's version: name@version", param="adapter")
    candidate = ops.registry.resolve(request.adapter)
    default = ops.registry.default_adapter()
    if default is candidate:
        raise ShadowConflictError(f"{candidate.spec} is the default: a shadow must be another version")
    shadow.config = ShadowConfig(spec=candidate.spec, fraction=request.fraction)
    return _status(shadow, ops)


@router.delete("/admin/shadow", response_model=ShadowStatus, responses=documented(401, 403, 503))
async def detach_shadow(shadow: ShadowDep, ops: OpsDep, _: AdminDep) -> ShadowStatus:
    shadow.config = None
    return _status(shadow, ops)


@router.post(
    "/admin/shadow/promote", response_model=ShadowComparison, responses=documented(400, 401, 403, 409, 503)
)
async def promote_shadow(
    request: ShadowPromoteRequest, shadow: ShadowDep, ops: OpsDep, monitor: MonitorDep, _: AdminDep
) -> ShadowComparison:
    """Make the shadow the default only on shadow evidence: at least `min_labels` labelled
    responses both scored, and the shadow's ECE lower with a paired 95% CI below 0."""
    config = shadow.config
    default = ops.registry.default_adapter()
    if config is None or default is None:
        raise ShadowConflictError("no shadow is attached to a default adapter")
    window = CalibrationQuery(window=request.window).window_seconds()
    since = monitor.clock() - window
    # What requests naming no method got from the default: the responses a promotion changes.
    served_method = method_for(None, default).value
    pairs = await monitor.read_store(
        "shadow",
        lambda: monitor.store.shadow_pairs(
            labelled_since=since, adapter=default.name, method=served_method, version=default.version
        ),
    )
    name, version = parse_spec(config.spec)
    mine = [p for p in pairs if (p.candidate_adapter, p.candidate_version) == (name, version)]
    if len(mine) < request.min_labels:
        raise ShadowConflictError(
            f"{config.spec} has shadow scores for {len(mine)} labelled responses of {default.spec}; "
            f"{request.min_labels} are required"
        )
    (comparison,) = await asyncio.to_thread(shadow_comparisons, mine)
    ci_high = comparison.ece_difference.ci_high
    if ci_high is None or ci_high >= 0:
        raise ShadowConflictError(
            f"{config.spec} is not better on shadow evidence: ECE difference "
            f"{comparison.ece_difference.estimate:+.4f}, 95% CI upper bound {ci_high}"
        )
    await ops.set_default(config.spec)
    shadow.config = None
    return comparison


DEFAULT_THRESHOLD = 0.5
QUEUE_CANDIDATES = 5000  # newest unlabelled items ranked per request


@router.get(
    "/feedback/queue",
    response_model=FeedbackQueue,
    responses=documented(400, 401, 403, 404, 503),
)
async def feedback_queue(
    query: Annotated[FeedbackQueueQuery, Query()],
    monitor: MonitorDep,
    selective: SelectiveDep,
    ops: OpsDep,
    _: AdminDep,
) -> FeedbackQueue:
    """Served responses whose labels would most improve calibration, for a labelling team:
    confidences near the decision thresholds, in bins with few labels, in drifted bins."""
    name, version, reference, resolved = None, None, None, Method.zero_shot
    if query.method is not Method.zero_shot:
        pinned = f"{query.adapter}@{query.version}" if query.adapter and query.version else query.adapter
        adapter = ops.registry.resolve(pinned)
        name, version = adapter.name, query.version or adapter.version
        resolved = method_for(query.method, adapter)  # unset: what requests naming none get
        manifest = adapter.manifest
        head = resolved is Method.calibrated_head
        reference = manifest.head_reference_histogram if head else manifest.reference_histogram
    since = monitor.clock() - query.window_seconds()
    method = resolved.value
    unlabelled = await monitor.read_store(
        "queue",
        lambda: monitor.store.unlabelled(
            served_since=since, adapter=name, method=method, version=version, limit=QUEUE_CANDIDATES
        ),
    )
    labelled = await monitor.read_store(
        "queue", lambda: monitor.store.outcomes(adapter=name, method=method, version=version)
    )
    thresholds = (
        [query.threshold]
        if query.threshold is not None
        else selective.book.thresholds(name, version, resolved) or [DEFAULT_THRESHOLD]
    )
    items = queue.rank(unlabelled, labelled, thresholds=thresholds, reference=reference, limit=query.limit)
    return FeedbackQueue(
        adapter=name,
        version=version,
        method=resolved,
        thresholds=thresholds,
        candidates=len(unlabelled),
        items=items,
    )
