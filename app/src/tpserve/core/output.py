"""What one sampled token means for its request: text to stream, and whether it is finished."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from tpserve.core.request import Event, Request

log = logging.getLogger(__name__)


def on_token(
    req: Request, token: int, eos_ids: Iterable[int], max_seq_len: int
) -> tuple[str | None, str | None]:
    """Append `token`; return (text delta to stream, finish reason: "stop" | "length" | None).

    The delta is None for a token that is not text (the EOS that ends the request). A request
    without a TextStream (the engine core process: the front end detokenizes and matches stop
    strings) gets "" for every other token: its id travels, its text is made in the front end."""
    req.output_ids.append(token)
    if token in eos_ids and not req.params.ignore_eos:
        return None, "stop"
    delta = ""
    if req.stream is not None:
        delta = req.stream.add(token)
        if req.stream.stopped:
            return delta, "stop"
    if (
        len(req.output_ids) >= req.params.max_new_tokens
        or len(req.prompt_ids) + len(req.output_ids) >= max_seq_len
    ):
        return delta, "length"
    return delta, None


def stopped_message(reason: str) -> str:
    """What every request in flight is told when the group must exit (both front ends say it)."""
    return f"the engine stopped ({reason}); retry"


def final_event(req: Request, reason: str, error: str | None = None, kind: str = "capacity") -> Event:
    """The request's last event: the held-back text tail (on stop/length), usage and the reason.
    Scheduler (in-process front end) and core client (front end process) both end requests here."""
    return Event(
        text=_tail(req, reason),
        finish_reason=reason,
        prompt_tokens=len(req.prompt_ids),
        completion_tokens=len(req.output_ids),
        error=error,
        error_kind=kind,
        output_ids=list(req.output_ids),
    )


def _tail(req: Request, reason: str) -> str:
    """The held-back text (a possible stop string's start) once the request ends normally."""
    if req.stream is None or reason not in ("stop", "length"):
        return ""
    try:
        return req.stream.flush()
    except Exception:  # the text so far was sent; a tail that cannot be decoded is dropped
        log.exception("request %d: final text could not be decoded", req.uid)
        req.stream = None
        return ""
