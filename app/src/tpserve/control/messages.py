"""The typed control plane: what rank 0 broadcasts to every rank, once per step or heartbeat.

    Step(uids, chunks, release)   every rank: release, then engine.forward(uids, chunks)
    Heartbeat(release)            every rank: release; "rank 0 is alive" (no forward)
    Recover(release)              every rank: wait for its device to finish the failed step, release
                                  (the failed step's sequences), return cached memory (after a CUDA OOM)
    Shutdown(release)             every rank: release, then exit 0

A Step's token id below zero names the previous step's greedy pick of one of its rows
(`from_previous`): asynchronous scheduling launches a step before the previous one's tokens reach
rank 0's host, and every rank reads that token from its own device (tpserve.engines.base.run_step):
its own greedy argmax, or, for a step whose `shared` is set, rank 0's picks (sampled rows), received
first.

`release` lists finished sequences; every rank frees them before anything else. Encoded by
tpserve.control.stepwire as int64s only (no pickle on the wire). After a Step, a Heartbeat and a
Recover every rank reports its outcome (Channel.agree): rank 0 goes on only once all did.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


def from_previous(row: int) -> int:
    """The token id that means "the previous step's pick of row `row`" (always < 0)."""
    return -1 - row


def previous_row(token: int) -> int:
    """Inverse of from_previous (token < 0)."""
    return -1 - token


@dataclasses.dataclass(frozen=True, slots=True)
class Step:
    uids: Sequence[int]
    chunks: Sequence[Sequence[int]]  # chunks[i]: the NEW tokens of sequence uids[i]
    release: Sequence[int] = ()
    #: > 0: the previous step's first `shared` picks come from rank 0 (it sampled some of them):
    #: every rank receives them (one broadcast on the data plane) before it resolves previous picks
    shared: int = 0

    def __post_init__(self) -> None:
        if self.shared < 0:
            raise ValueError(f"a step shares a negative number of picks: {self.shared}")
        if len(self.uids) != len(self.chunks):
            raise ValueError(
                f"a step needs one chunk per uid ({len(self.uids)} uids, {len(self.chunks)} chunks)"
            )


@dataclasses.dataclass(frozen=True, slots=True)
class Heartbeat:
    release: Sequence[int] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Recover:
    release: Sequence[int] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Shutdown:
    release: Sequence[int] = ()


Message = Step | Heartbeat | Recover | Shutdown
