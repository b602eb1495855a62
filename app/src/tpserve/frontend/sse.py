"""Server-sent events: `data: {json}\\n\\n` per chunk, then `data: [DONE]`."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse

from tpserve.core.request import Event
from tpserve.frontend.generation import final_error, usage

_MARK = "\u0000tpserve-text\u0000"


def sse_response(
    events: AsyncIterator[Event],
    to_chunk: Callable[[Event], dict[str, Any]],
    first: dict[str, Any] | None,
    usage_chunk: Callable[[dict[str, Any]], dict[str, Any]],
    include_usage: bool,
) -> StreamingResponse:
    """Stream `first` (if any), `to_chunk(event)` per event, an error chunk on a timeout or engine
    failure, `usage_chunk(usage)` after the final event when asked for, then `[DONE]`."""

    text_chunk = text_chunk_template(to_chunk)

    async def body() -> AsyncIterator[bytes]:
        if first is not None:
            yield sse_data(first)
        async for ev in events:
            error = final_error(ev) if ev.final else None
            if error is not None:
                yield sse_data(error.body())
                break
            if ev.text and not ev.final and text_chunk is not None:
                yield text_chunk(ev.text)  # the per-token hot path: no dict, one small dumps
            elif ev.text or ev.final:
                yield sse_data(to_chunk(ev))
            if ev.final and include_usage:
                yield sse_data(usage_chunk(usage(ev).model_dump()))
        yield b"data: [DONE]\n\n"

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def sse_data(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


def text_chunk_template(to_chunk: Callable[[Event], dict[str, Any]]) -> Callable[[str], bytes] | None:
    """`text -> sse_data(to_chunk(Event(text=text)))` for a plain text delta, byte for byte the same.

    The chunk is serialised once with a marker as its text; each token then only JSON-encodes its
    own text between the two halves. None when the marker does not appear exactly once.
    """
    full = json.dumps(to_chunk(Event(text=_MARK)), ensure_ascii=False)
    mark = json.dumps(_MARK, ensure_ascii=False)
    if full.count(mark) != 1:
        return None
    head, tail = full.split(mark)
    head_b, tail_b = b"data: " + head.encode(), tail.encode() + b"\n\n"
    dumps = json.dumps

    def text_chunk(text: str) -> bytes:
        return head_b + dumps(text, ensure_ascii=False).encode() + tail_b

    return text_chunk
