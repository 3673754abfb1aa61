from __future__ import annotations

from fastapi import APIRouter

from service.api.deps import MonitorDep
from service.api.protocol import ErrorResponse, FeedbackRequest, FeedbackResponse

router = APIRouter()


@router.post(
    "/feedback",
    response_model=FeedbackResponse,
    responses={
        400: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        409: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
async def feedback(request: FeedbackRequest, monitor: MonitorDep) -> FeedbackResponse:
    """Say whether served answers were correct: `{id, correct}` for a /generate response,
    `{id, index, correct}` for an item of a /score response, or a batch in `items`.
    All labels of a request are stored or none; repeating a stored label is a no-op."""
    return await monitor.feedback(request)
