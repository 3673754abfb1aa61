"""Server-sent events: the response type and the framing both streaming APIs share.

A stream holds resources for as long as it runs (admission slots, the adapter lease),
taken before the response starts so that a refusal is still an ordinary 4xx/429. The
response releases them when it ends for any reason — finished, failed, or the client
gone — and closes the event generator first, which cancels the engine work behind it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service.errors import ServiceError

DONE = "data: [DONE]\n\n"
# Documents the 200 of a route that streams when asked (`stream: true`).
STREAM_200: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "JSON, or SSE"}
}


def sse(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json()}\n\n"


async def framed(
    events: AsyncGenerator[BaseModel, None], error: Callable[[ServiceError], BaseModel]
) -> AsyncGenerator[str, None]:
    """SSE frames of `events`, then `data: [DONE]`. A failure after the response started
    cannot change its status any more: it becomes an error frame (what OpenAI's clients
    raise from), still followed by [DONE]."""
    try:
        async for event in events:
            yield sse(event)
    except ServiceError as exc:
        yield sse(error(exc))
    finally:
        await events.aclose()
    yield DONE


class EventStream(StreamingResponse):
    def __init__(self, frames: AsyncGenerator[str, None], *, resources: ExitStack) -> None:
        # X-Accel-Buffering: nginx passes each frame on as it comes instead of buffering.
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        super().__init__(frames, media_type="text/event-stream", headers=headers)
        self._frames = frames
        self._resources = resources

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._frames.aclose()
            self._resources.close()


@contextmanager
def held_until_streamed() -> Iterator[ExitStack]:
    """An ExitStack for what a stream holds: closed here if setting up the stream fails,
    else handed to `EventStream` (which closes it)."""
    resources = ExitStack()
    try:
        yield resources
    except BaseException:
        resources.close()
        raise
