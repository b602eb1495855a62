"""The OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from tpserve.core.request import Event
from tpserve.core.service import Service
from tpserve.frontend.errors import APIError
from tpserve.frontend.generation import Pipeline, Prompt, usage
from tpserve.frontend.guards import Guards
from tpserve.frontend.schemas import ChatCompletionRequest, CompletionRequest, StreamOptions
from tpserve.frontend.sse import sse_response


@dataclass(frozen=True)
class Envelope:
    """What every body of one OpenAI response shares (id, object, created, model), around one
    choice whose payload sits under `key`: "text" (completions), "delta" (chat chunks) or
    "message" (a whole chat completion)."""

    id: str
    object: str
    created: int
    model: str
    key: str

    def head(self) -> dict[str, Any]:
        return {"id": self.id, "object": self.object, "created": self.created, "model": self.model}

    def choice(self, payload: Any, finish: str | None) -> dict[str, Any]:
        choice = {"index": 0, self.key: payload, "finish_reason": finish, "logprobs": None}
        return {**self.head(), "choices": [choice]}

    def stream(
        self,
        events: AsyncIterator[Event],
        stream_options: StreamOptions | None,
        payload: Callable[[Event], Any],
        first: Any = None,
    ) -> StreamingResponse:
        """SSE: a chunk with `first` as payload (if any), one per event with `payload(event)`, and
        the usage chunk (no choices) when `stream_options.include_usage` asks for it."""
        return sse_response(
            events,
            lambda ev: self.choice(payload(ev), ev.finish_reason),
            None if first is None else self.choice(first, None),
            lambda use: {**self.head(), "choices": [], "usage": use},
            bool(stream_options and stream_options.include_usage),
        )


def openai_router(service: Service, guards: Guards) -> APIRouter:
    cfg = service.config
    router = APIRouter(dependencies=[Depends(guards.authorize)])
    pipeline = Pipeline(service, guards)

    def envelope(prefix: str, object_: str, key: str) -> Envelope:
        return Envelope(f"{prefix}-{uuid.uuid4().hex}", object_, int(time.time()), cfg.served_model_name, key)

    @router.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": cfg.served_model_name,
                    "object": "model",
                    "created": int(service.started),
                    "owned_by": "tpserve",
                }
            ],
        }

    @router.post("/v1/completions")
    async def completions(body: CompletionRequest, http: Request) -> Any:
        guards.openai_checks(body)
        token_ids = bool(body.prompt) and all(isinstance(t, int) for t in body.prompt)
        prompts = [body.prompt] if isinstance(body.prompt, str) or token_ids else body.prompt
        if len(prompts) != 1:
            raise APIError(
                400, "exactly one prompt per request is supported", param="prompt", code="unsupported_value"
            )
        # token ids as the prompt: OpenAI allows it (exact lengths for benchmarks)
        prompt = Prompt(token_ids=[int(t) for t in prompts[0]]) if token_ids else Prompt(text=str(prompts[0]))
        req = pipeline.submit(prompt, body, body.max_tokens, "max_tokens", 1.0, "/v1/completions")
        out = envelope("cmpl", "text_completion", "text")
        prefix = (service.decode(req.prompt_ids) if token_ids else str(prompts[0])) if body.echo else ""
        if body.stream:
            return out.stream(pipeline.events(req), body.stream_options, lambda ev: ev.text)
        text, final = await pipeline.complete(req, http)
        return {**out.choice(prefix + text, final.finish_reason), "usage": usage(final).model_dump()}

    @router.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, http: Request) -> Any:
        guards.openai_checks(body)
        try:
            messages = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages
            ]
        except ValueError as exc:
            raise APIError(400, str(exc), param="messages", code="unsupported_value") from None
        max_param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
        req = pipeline.submit(
            Prompt(messages=messages, param="messages"), body, body.max_completion_tokens or body.max_tokens,
            max_param, 1.0, "/v1/chat/completions",
        )  # fmt: skip
        out = envelope("chatcmpl", "chat.completion.chunk", "delta")
        if body.stream:
            return out.stream(
                pipeline.events(req),
                body.stream_options,
                lambda ev: {"content": ev.text} if ev.text else {},
                first={"role": "assistant", "content": ""},
            )
        text, final = await pipeline.complete(req, http)
        whole = replace(out, object="chat.completion", key="message")
        message = {"role": "assistant", "content": text}
        return {**whole.choice(message, final.finish_reason), "usage": usage(final).model_dump()}

    return router
