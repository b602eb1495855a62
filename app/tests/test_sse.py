"""The SSE hot path: a text delta's pre-serialised chunk is byte-identical to the generic one."""

from __future__ import annotations

import random
from typing import Any

from tpserve.core.request import Event
from tpserve.frontend.sse import sse_data, text_chunk_template


def _completion_chunk(ev: Event) -> dict[str, Any]:  # the shapes tpserve.frontend streams
    choice = {"index": 0, "text": ev.text, "finish_reason": ev.finish_reason, "logprobs": None}
    return {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m", "choices": [choice]}


def _chat_chunk(ev: Event) -> dict[str, Any]:
    delta = {"content": ev.text} if ev.text else {}
    choice = {"index": 0, "delta": delta, "finish_reason": ev.finish_reason, "logprobs": None}
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    return {**head, "choices": [choice]}


def test_text_chunk_template_is_byte_identical() -> None:
    rng = random.Random(0)
    alphabet = 'ab "\\\n\t\u0000\u2028你好🚀\ufffd</>{}'
    texts = ["x", '"', "\\", "\u0000", "\u0000tpserve-text\u0000"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(500)]
    for to_chunk in (_completion_chunk, _chat_chunk):
        fast = text_chunk_template(to_chunk)
        assert fast is not None
        for text in texts:
            assert fast(text) == sse_data(to_chunk(Event(text=text))), text


def test_template_refused_when_marker_is_not_unique() -> None:
    def twice(ev: Event) -> dict[str, Any]:
        return {"a": ev.text, "b": ev.text}

    assert text_chunk_template(twice) is None
