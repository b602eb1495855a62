"""From a checked body to the scheduler's sampling parameters, and from its events to a result."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

from fastapi import Request as HTTPRequest

from tpserve.core.request import Event, Request
from tpserve.core.sampling import SamplingParams
from tpserve.core.service import Service
from tpserve.frontend.errors import APIError
from tpserve.frontend.guards import Guards
from tpserve.frontend.schemas import SamplingFields, Usage


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A request's prompt in one of its three forms; `param` names it in errors."""

    text: str | None = None  # raw text (completions, predictions)
    messages: list[dict[str, str]] | None = None  # through the chat template (chat, /generate)
    token_ids: list[int] | None = None  # already tokens (OpenAI completions allow it)
    param: str = "prompt"


class Pipeline:
    """The ONE way a route turns a checked body into a running request, in one fixed order:
    admission (not loading, not draining, queue) -> token budget -> prompt size before tokenizing
    -> tokenize (or check token ids) -> prompt/context limits -> submit. Routes call `submit`, then
    `complete` (whole answer) or `events` (a stream); they never touch the scheduler."""

    def __init__(self, service: Service, guards: Guards) -> None:
        self.service, self.guards = service, guards

    def submit(
        self,
        prompt: Prompt,
        sampling: SamplingFields,
        max_new: int | None,
        max_param: str,
        default_temperature: float,
        endpoint: str,
        default_max_new: int | None = None,
    ) -> Request:
        guards, service = self.guards, self.service
        guards.admit()  # before anything reads the tokenizer (None while loading)
        n_max = guards.max_new(max_new, max_param, default_max_new)
        if prompt.token_ids is not None:
            ids = list(prompt.token_ids)
            guards.check_token_ids(ids)
        elif prompt.messages is not None:
            guards.check_text_size(*(m["content"] for m in prompt.messages), param=prompt.param)
            ids = service.encode_chat(prompt.messages)
        else:
            guards.check_text_size(prompt.text, param=prompt.param)
            ids = service.encode_text(prompt.text or "")
        guards.check_prompt(ids, n_max)
        return service.new_request(ids, sampling_params(sampling, n_max, default_temperature), endpoint)

    def events(self, req: Request) -> AsyncIterator[Event]:
        return self.service.events(req)

    async def complete(self, req: Request, http: HTTPRequest) -> tuple[str, Event]:
        return await collect(req, self.service.events(req), self.service.config.request_timeout_s, http)


def sampling_params(body: SamplingFields, n_max: int, default_temperature: float) -> SamplingParams:
    top_k = body.top_k or 0
    return SamplingParams(
        max_new_tokens=n_max,
        temperature=default_temperature if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(top_k, 0),
        seed=body.seed,
        stop=tuple(body.stop_list()),
        ignore_eos=body.ignore_eos,
    )


async def collect(
    req: Request, req_events: AsyncIterator[Event], request_timeout_s: float, http: HTTPRequest
) -> tuple[str, Event]:
    """The whole text and the final event; a timeout or engine failure becomes an `APIError`.
    A client that disconnects before the end cancels `req` (the scheduler frees it next step)."""
    watcher = asyncio.create_task(_cancel_on_disconnect(http, req))
    try:
        text: list[str] = []
        async for ev in req_events:
            text.append(ev.text)
            if ev.final:
                error = final_error(ev, request_timeout_s)
                if error is not None:
                    raise error
                return "".join(text), ev
        raise APIError(500, "generation ended without a final event", "server_error")
    finally:
        watcher.cancel()


async def _cancel_on_disconnect(http: HTTPRequest, req: Request) -> None:
    """Wait for the ASGI server's `http.disconnect` (the body is already read, so nothing else
    arrives) and cancel the request; cancelled itself when the answer is complete."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            req.cancel()
            return


def final_error(ev: Event, request_timeout_s: float | None = None) -> APIError | None:
    """The one map from a final event to the error the client gets (JSON body or SSE chunk):
    timeout -> 504; capacity ran out -> 503 + Retry-After (retry later); something failed for this
    request alone -> 500 (the service goes on); None for a normal end."""
    if ev.finish_reason == "timeout":
        within = f" within {request_timeout_s:g} s" if request_timeout_s else ""
        return APIError(504, f"generation did not finish{within}", "timeout_error", code="request_timeout")
    if ev.finish_reason != "error":
        return None
    if ev.error_kind == "capacity":
        return APIError(
            503,
            ev.error or "generation failed",
            "service_unavailable",
            code="engine_capacity",
            headers={"Retry-After": "1"},
        )
    return APIError(500, ev.error or "generation failed", "server_error", code="generation_failed")


def usage(ev: Event) -> Usage:
    return Usage(
        prompt_tokens=ev.prompt_tokens,
        completion_tokens=ev.completion_tokens,
        total_tokens=ev.prompt_tokens + ev.completion_tokens,
    )
