"""The typed messages between the front end process and the engine core (rank 0), and their one
codec: msgpack of plain lists (no pickle), over ZeroMQ IPC sockets (tpserve.core.coreproc,
tpserve.frontend.core_client).

    front end -> core (one PUSH -> the core's PULL, read by the core's I/O thread)
        Hello(pid, eos_ids)          first: the front end is up; the tokenizer's EOS ids
        Submit(uid, prompt_ids, params, created, timeout_s, endpoint)
        Cancel(uids)                 client gone, timeout, or a stop string matched in the front end
        Drain(timeout_s)             the front end got SIGTERM: finish in flight, then shut down
        MetricsQuery(qid)            GET /metrics: the core's series

    core -> front end (two PUSH -> the front end's PULL)
      from the engine thread, in step order:
        Ready(engine, reason, info, ranks)                       loaded; serving
        Outputs(at, steps, queue_depth, in_flight, uids, tokens, finals)   ONE per step
        Stopped()                    every rank was told to shut down; nothing more comes
      from the core's I/O thread (also while a step hangs):
        Status(at, pid, phase, step_age, steps, queue_depth, in_flight, engine_details,
               heartbeat_age, oom_cap)                                                   every 0.5 s
        MetricsReply(qid, text)

`at` is the sender's time.monotonic() (CLOCK_MONOTONIC: one clock for every process of a host),
so the front end keeps the newest counts whichever socket they came by; `created` is the front end's
arrival time, so the core's TTFT and deadline are the client's. A step's `uids[i]` got `tokens[i]`
(prompt-only steps of a chunked prefill send nothing); `finals` end requests (Final).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import msgpack

from tpserve.core.sampling import SamplingParams

#: The core's I/O thread pushes a Status this often (and at once when its phase changes).
STATUS_INTERVAL_S = 0.5


@dataclasses.dataclass(frozen=True, slots=True)
class Hello:
    pid: int
    eos_ids: Sequence[int]


@dataclasses.dataclass(frozen=True, slots=True)
class Submit:
    uid: int
    prompt_ids: Sequence[int]
    params: SamplingParams
    created: float
    timeout_s: float
    endpoint: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Cancel:
    uids: Sequence[int]


@dataclasses.dataclass(frozen=True, slots=True)
class Drain:
    timeout_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class MetricsQuery:
    qid: int


@dataclasses.dataclass(frozen=True, slots=True)
class Ready:
    engine: str
    reason: str
    info: dict[str, Any]
    ranks: list[dict[str, Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class Final:
    """A request's end, as the core saw it (the front end adds the held-back text tail)."""

    uid: int
    reason: str  # stop | length | timeout | cancelled | error
    error: str | None
    kind: str  # capacity | internal (with reason "error")
    prompt_tokens: int
    completion_tokens: int
    output_ids: Sequence[int]


@dataclasses.dataclass(frozen=True, slots=True)
class Outputs:
    at: float
    steps: int
    queue_depth: int
    in_flight: int
    uids: Sequence[int]
    tokens: Sequence[int]
    finals: Sequence[Final] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Stopped:
    """The step loop ended: drained (error ""), or the group is exiting (error: why; every request
    still in flight gets an error answer instead of a cut connection)."""

    error: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    at: float
    pid: int
    phase: str  # loading | ok | draining | stopped
    step_age: float  # seconds the running step had run at `at` (0: between steps)
    steps: int
    queue_depth: int
    in_flight: int
    engine_details: dict[str, Any]
    heartbeat_age: float = 0.0  # seconds since every rank last answered, at `at` (idle partitions)
    oom_cap: int | None = None  # sequences per step since a CUDA OOM (None: no cap)


@dataclasses.dataclass(frozen=True, slots=True)
class MetricsReply:
    qid: int
    text: bytes


Message = Hello | Submit | Cancel | Drain | MetricsQuery | Ready | Outputs | Stopped | Status | MetricsReply
TYPES: tuple[type, ...] = (
    Hello, Submit, Cancel, Drain, MetricsQuery, Ready, Outputs, Stopped, Status, MetricsReply,
)  # fmt: skip
TAGS: dict[type, int] = {t: i + 1 for i, t in enumerate(TYPES)}
_FIELDS: dict[type, tuple[str, ...]] = {
    t: tuple(f.name for f in dataclasses.fields(t)) for t in (*TYPES, Final)
}
_PARAMS = tuple(f.name for f in dataclasses.fields(SamplingParams))


class WireError(ValueError):
    pass


def encode(message: Message) -> bytes:
    tag = TAGS.get(type(message))
    if tag is None:
        raise WireError(f"not a front end <-> core message: {type(message).__name__}")
    if isinstance(message, Outputs):  # the per-step hot path: no per-field getattr loop
        finals = [list(_values(f)) for f in message.finals]
        body = [message.at, message.steps, message.queue_depth, message.in_flight,
                message.uids, message.tokens, finals]  # fmt: skip
    elif isinstance(message, Submit):
        params = [getattr(message.params, name) for name in _PARAMS]
        body = [message.uid, message.prompt_ids, params, message.created, message.timeout_s, message.endpoint]
    else:
        body = list(_values(message))
    return msgpack.packb([tag, *body], use_bin_type=True, default=_plain)


def _plain(value: Any) -> Any:
    """What msgpack cannot pack: a numpy/torch scalar as its number, anything else as its str (an
    odd value in an engine's describe() must not end the link)."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    return str(value)


def _values(message: Any) -> Any:
    return (getattr(message, name) for name in _FIELDS[type(message)])


def decode(data: bytes) -> Message:
    try:
        tag, *body = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if type(tag) is not int or not 1 <= tag <= len(TYPES):
            raise ValueError(f"unknown message tag {tag!r}")
        kind = TYPES[tag - 1]
        if kind is Outputs:
            *head, finals = body
            return Outputs(*head, [Final(*f) for f in finals])
        if kind is Submit:
            uid, prompt_ids, params, *rest = body
            fields = dict(zip(_PARAMS, params, strict=True))
            fields["stop"] = tuple(fields["stop"])
            return Submit(uid, prompt_ids, SamplingParams(**fields), *rest)
        return kind(*body)  # type: ignore[no-any-return]
    except (ValueError, TypeError, IndexError, msgpack.UnpackException) as exc:
        raise WireError(f"malformed front end <-> core message ({type(exc).__name__}: {exc})") from None
