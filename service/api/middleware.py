"""`RequestGuard`: the ASGI layer that bounds request bodies and notices departed clients.

Two jobs that both need the whole body read before the app sees it:

* A body larger than `max_body_bytes` is refused with 413 before any of it is parsed
  (a `Content-Length` that says so is refused without reading at all), so a client
  cannot make the server buffer or JSON-decode megabytes.
* Neither Starlette nor FastAPI cancels a plain (non-streaming) handler when its client
  disconnects: uvicorn only queues an `http.disconnect` message that nobody reads, and
  the engine keeps generating for no one. Once the body is read, the guard itself waits
  for that message and cancels the handler; cancelling the handler closes vLLM's
  `generate()` stream, which aborts the engine request.
"""

from __future__ import annotations

import asyncio
import enum
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.error_mapping import error_response
from service.errors import PayloadTooLargeError

CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before the response


class Unread(enum.Enum):
    """Why `_read_body` returned no body."""

    TOO_LARGE = "too large"
    CLIENT_GONE = "client gone"


class RequestGuard:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        body = await self._read_body(scope, receive)
        if body is Unread.TOO_LARGE:
            await self._refuse(scope, receive, send)
        elif isinstance(body, bytes):
            await self._run(scope, body, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | Unread:
        """The whole body; TOO_LARGE as soon as it is (or says it will be) over the limit;
        CLIENT_GONE if the client left while sending it."""
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return Unread.TOO_LARGE
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return Unread.CLIENT_GONE
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return Unread.TOO_LARGE
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        error = PayloadTooLargeError(
            f"request body exceeds this server's limit of {self.max_body_bytes} bytes "
            "(CONFIDENCE_MAX_BODY_BYTES)",
            param="body",
        )
        response = error_response(error, path=scope.get("path", ""))
        # The unread rest of the body makes the connection unusable for another request.
        response.headers["Connection"] = "close"
        await response(scope, receive, send)

    async def _run(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> None:
        disconnected = asyncio.Event()
        response_started = response_done = False
        body_given = False

        async def replay() -> Message:
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await disconnected.wait()
            return {"type": "http.disconnect"}

        async def tracked_send(message: Message) -> None:
            nonlocal response_started, response_done
            response_started |= message["type"] == "http.response.start"
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                response_done = True
            await send(message)

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        handler = asyncio.ensure_future(self.app(scope, replay, tracked_send))
        watcher = asyncio.ensure_future(watch())
        try:
            await asyncio.wait({handler, watcher}, return_when=asyncio.FIRST_COMPLETED)
            # Servers also report a disconnect once the response is complete; only a
            # client that left before then has its handler cancelled.
            if not handler.done() and not response_done:
                handler.cancel()
            await asyncio.wait({handler})
        finally:  # also when this task itself is cancelled (server shutdown)
            handler.cancel()
            watcher.cancel()
            if watcher.done() and not watcher.cancelled():
                watcher.exception()  # a failed receive counts as a disconnect; do not log it twice
        if not handler.cancelled():
            handler.result()  # re-raise what the app raised
        elif not response_started:
            # Nobody reads it (servers drop sends to a closed connection), but middleware
            # outside this one (request metrics) records "client closed request", not a 500.
            await send({"type": "http.response.start", "status": CLIENT_CLOSED_REQUEST, "headers": []})
            await send({"type": "http.response.body", "body": b""})


def install(app: Any, *, max_body_bytes: int) -> None:
    app.add_middleware(RequestGuard, max_body_bytes=max_body_bytes)
