"""ASGI middleware: request body size limit (header AND actual bytes) and per-response counting."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

Scope = dict[str, Any]
Message = dict[str, Any]
ASGIApp = Callable[..., Any]


class BodyLimitMiddleware:
    """413 when Content-Length or the bytes actually sent exceed max_body_bytes.

    The body is read (at most max_body_bytes + 1 bytes) before the app runs and replayed to it,
    so a chunked upload without Content-Length is limited too.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        on_response: Callable[[str, int], None] | None = None,
        paths: Iterable[str] = (),
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_response = on_response
        self.paths = set(paths)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        status_box = [0]

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = int(message["status"])
            await send(message)

        try:
            if scope.get("method") in ("POST", "PUT", "PATCH"):
                replay = await self._read_limited(scope, receive)
                if replay is None:
                    await self._reject(counting_send)
                    return
                await self.app(scope, replay, counting_send)
            else:
                await self.app(scope, receive, counting_send)
        finally:
            if self.on_response is not None and status_box[0]:
                self.on_response(path, status_box[0])

    async def _read_limited(self, scope: Scope, receive: Any) -> Any:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    if int(value) > self.max_body_bytes:
                        return None
                except ValueError:
                    return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = [False]

        async def replay() -> Message:
            if not sent[0]:
                sent[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _reject(self, send: Any) -> None:
        payload = json.dumps(
            {
                "error": {
                    "message": f"request body exceeds {self.max_body_bytes} bytes",
                    "type": "invalid_request_error",
                    "param": None,
                    "code": "body_too_large",
                }
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
