"""What every request passes before the app sees it: the service's access rules, the body-size
limit, and a clean answer to a failure nobody expected.

Pure ASGI and outermost, so an oversized body is refused (413) before authentication and
before any JSON is parsed, whether it declares its length or streams in chunks, and the
access rules (a ContextVar) are set before the app is awaited: the request's validation and
the threadpool that runs sync routes inherit them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from api.errors import ApiError, internal_error, problem
from circuitd.access import service_access
from circuitd.settings import get_settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def too_large(size: str, limit: int) -> ApiError:
    detail = f"request body: {size}, over the limit of {limit} bytes (CIRCUITD_MAX_BODY_BYTES)"
    return ApiError(413, detail, "too_large", {"Connection": "close"})


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class Boundary:
    """Runs the app under the service's access rules with a bounded request body, and answers an
    exception nothing else caught with a clean 500. (Here rather than as an app exception handler:
    Starlette re-raises after such a handler, so the server would log the traceback twice.)"""

    def __init__(self, app: App, max_body_bytes: int | None = None):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            with service_access():
                await self.app(scope, receive, send)
            return
        limit = get_settings().max_body_bytes if self.max_body_bytes is None else self.max_body_bytes
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        declared = _declared_length(scope)
        if declared is not None and declared > limit:
            await self._refuse(too_large(f"{declared} bytes", limit), scope, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # stop reading: what is left is never buffered
                    raise too_large(f"more than {limit} bytes streamed", limit)
            return message

        try:
            with service_access():
                await self.app(scope, counting_receive, tracking_send)
        except ApiError as exc:  # raised by counting_receive where the app did not catch it
            if started:
                raise
            await self._refuse(exc, scope, send)
        except Exception as exc:
            if started:
                raise
            await internal_error(exc, scope.get("method", ""), scope.get("path", ""))(scope, _gone, send)

    @staticmethod
    async def _refuse(exc: ApiError, scope: Scope, send: Send) -> None:
        await problem(exc.status_code, str(exc.detail), exc.code, exc.headers)(scope, _gone, send)


async def _gone() -> Message:
    """What the response reads once the request's body is abandoned."""
    return {"type": "http.disconnect"}
