"""From a checked body to the scheduler's sampling parameters, and from its events to a result."""

from __future__ import annotations

from collections.abc import AsyncIterator

from tpserve.api.errors import APIError
from tpserve.sampling import SamplingParams
from tpserve.scheduler import Event
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


async def collect(req_events: AsyncIterator[Event], request_timeout_s: float) -> tuple[str, Event]:
    """The whole text and the final event; a timeout or engine failure becomes an `APIError`."""
    text: list[str] = []
    async for ev in req_events:
        text.append(ev.text)
        if ev.final:
            if ev.finish_reason == "timeout":
                raise APIError(
                    504,
                    f"generation did not finish within {request_timeout_s:g} s",
                    "timeout_error",
                    code="request_timeout",
                )
            if ev.finish_reason == "error":
                raise APIError(
                    503,
                    ev.error or "generation failed",
                    "service_unavailable",
                    code="engine_capacity",
                    headers={"Retry-After": "1"},
                )
            return "".join(text), ev
    raise APIError(500, "generation ended without a final event", "server_error")


def usage(ev: Event) -> Usage:
    return Usage(
        prompt_tokens=ev.prompt_tokens,
        completion_tokens=ev.completion_tokens,
        total_tokens=ev.prompt_tokens + ev.completion_tokens,
    )
