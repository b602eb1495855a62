"""From a checked body to the scheduler's sampling parameters, and from its events to a result."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request as HTTPRequest

from tpserve.api.errors import APIError
from tpserve.sampling import SamplingParams
from tpserve.scheduler import Event, Request
from tpserve.schemas import SamplingFields, Usage


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
