"""One generation's state, shared by the HTTP coroutine (reader) and the engine thread (writer),
and the events the HTTP side receives (text deltas, then one final event)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import threading
import time
from collections.abc import Callable

import torch

from tpserve.core.sampling import SamplingParams
from tpserve.core.textstream import TextStream


@dataclasses.dataclass
class Event:
    """What the HTTP side receives: text deltas, then one final event."""

    text: str = ""
    token_id: int | None = None
    finish_reason: str | None = None  # stop | length | timeout | cancelled | error
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None
    #: with finish_reason "error": "capacity" (retry later: 503) or "internal" (this request only: 500)
    error_kind: str = "capacity"
    #: on the final event: every generated token id (EOS included)
    output_ids: list[int] = dataclasses.field(default_factory=list)

    @property
    def final(self) -> bool:
        return self.finish_reason is not None


_uids = itertools.count(1)


class Request:
    """One generation, shared by the HTTP coroutine (reader) and the scheduler thread (writer)."""

    def __init__(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        timeout_s: float,
        loop: asyncio.AbstractEventLoop | None,
        endpoint: str = "",
        uid: int | None = None,
        created: float | None = None,
    ) -> None:
        """`uid`, `created`: given by the front end process (its id, its time.monotonic(): one
        CLOCK_MONOTONIC per host) when this is the engine core's copy; `loop`: None there."""
        self.uid = next(_uids) if uid is None else uid
        self.prompt_ids = prompt_ids
        self.params = params
        self.endpoint = endpoint
        self.created = time.monotonic() if created is None else created
        self.deadline = self.created + timeout_s
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.cancelled = threading.Event()
        self._loop = loop
        #: the front end process: tells the engine core (a Cancel message)
        self.on_cancel: Callable[[Request], None] | None = None
        # scheduler-thread state
        self.output_ids: list[int] = []
        #: what the engine must be fed before the next token is sampled: the prompt, or after a
        #: recompute the prompt + every token generated so far (see recompute)
        self.feed: list[int] = prompt_ids
        self.prefill_pos = 0  # tokens of `feed` already sent to the engine (chunked prefill)
        self.prefilled = False  # the whole feed is in the engine and a token was sampled
        #: (step, row): this request's next token is that step's pick of that row, launched but not
        #: yet on the host (asynchronous scheduling); None: every token it has is in output_ids
        self.pending: tuple[int, int] | None = None
        self.generator: torch.Generator | None = None
        self.stream: TextStream | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.finish_reason: str | None = None

    def recompute(self) -> None:
        """The engine lost this sequence (freed after a failed step): feed it again from its first
        token, the prompt and what was generated so far, as one prompt; the stream goes on where it
        was (nothing is sent twice, the sampler's generator keeps its state)."""
        self.feed = [*self.prompt_ids, *self.output_ids]
        self.prefill_pos = 0
        self.prefilled = False
        self.pending = None

    def cancel(self) -> None:
        """Called from the HTTP side (client went away, timeout): the scheduler drops it."""
        if self.cancelled.is_set():
            return
        self.cancelled.set()
        if self.on_cancel is not None:
            self.on_cancel(self)

    def push(self, event: Event) -> None:
        """Deliver one event now (one event-loop wake-up); the scheduler batches via deliver()."""
        deliver([(self, event)])


def _put_all(batch: list[tuple[Request, Event]]) -> None:
    """Runs on the event loop: hand every event of one step to its request's queue."""
    for req, event in batch:
        req.events.put_nowait(event)


def deliver(batch: list[tuple[Request, Event]]) -> None:
    """One `call_soon_threadsafe` per event loop for a whole batch of events (in order)."""
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Request, Event]]] = {}
    for item in batch:
        loop = item[0]._loop
        assert loop is not None, "a request of the engine core process has no event loop"
        by_loop.setdefault(loop, []).append(item)
    for loop, items in by_loop.items():
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:  # the HTTP event loop is already closed (process ending)
            for req, _ in items:
                req.cancel()
