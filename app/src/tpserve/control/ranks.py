"""The rank protocol: every rank runs every step that rank 0 broadcasts.

Messages: tpserve.control.messages (Step → engine.forward, Heartbeat → nothing, Shutdown → exit 0), each
with the `release` list of finished sequences that every rank frees first; over the shared-memory
mailbox or the gloo control group, encoded as int64s by tpserve.control.stepwire.

A rank that waits longer than the control group's timeout, or whose collective fails, exits
non-zero at once (dist.fatal). The Watchdog also kills a rank whose step hangs (NCCL can block
for its whole process-group timeout when a peer dies mid-collective).
"""

from __future__ import annotations

import logging
import threading
import time

import torch

from tpserve.control.dist import Channel, fatal
from tpserve.control.messages import Message, Shutdown, Step
from tpserve.engines.base import Engine

log = logging.getLogger("tpserve.control.ranks")


def execute(engine: Engine, message: Message) -> torch.Tensor | None:
    """Apply one broadcast message on this rank (identical on every rank)."""
    for uid in message.release:
        engine.release(uid)
    if isinstance(message, Step):
        return engine.forward(message.uids, message.chunks)
    return None


class Watchdog:
    """Kills the process when one step (broadcast + forward) takes longer than limit_s."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._since: float | None = None
        self._lock = threading.Lock()
        if limit_s > 0:
            threading.Thread(target=self._watch, name="tpserve-watchdog", daemon=True).start()

    def busy(self) -> None:
        with self._lock:
            self._since = time.monotonic()

    def idle(self) -> None:
        with self._lock:
            self._since = None

    def busy_for(self) -> float:
        with self._lock:
            since = self._since
        return 0.0 if since is None else time.monotonic() - since

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.limit_s / 4))
            with self._lock:
                since = self._since
            if since is not None and time.monotonic() - since > self.limit_s:
                fatal(f"a step has been running for more than {self.limit_s:.0f} s (dead peer?)", 3)


def worker_loop(engine: Engine, channel: Channel, watchdog: Watchdog) -> int:
    """Ranks > 0: wait for rank 0's messages and run them until 'shutdown'."""
    rank = channel.info.rank
    steps = 0
    while True:
        try:
            message = channel.broadcast(None)
        except Exception as exc:  # gloo timeout or a peer's connection closed
            fatal(f"rank {rank}: control channel failed ({type(exc).__name__}: {exc})")
        watchdog.busy()
        try:
            execute(engine, message)
        except Exception as exc:
            fatal(f"rank {rank}: {type(message).__name__} failed ({type(exc).__name__}: {exc})")
        watchdog.idle()
        if isinstance(message, Shutdown):
            log.info("rank %d: shutdown after %d steps", rank, steps)
            return 0
        steps += isinstance(message, Step)
