"""The compact step message: round trips, and a real 2-process gloo broadcast (no mocks)."""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import random
import time
from typing import Any

import pytest
from conftest import free_port

from tpserve.control import stepwire
from tpserve.control.dist import Channel
from tpserve.control.messages import Heartbeat, Message, Shutdown, Step, from_previous
from tpserve.engines.base import DistInfo


def _messages(rng: random.Random) -> list[Message]:
    out: list[Message] = [
        Heartbeat([]),
        Heartbeat([3, 9]),
        Shutdown([1]),
        Step([7], [[1, 2, 3]], []),
        Step([], [], [5]),
        Step([4, 5], [[from_previous(1)], [from_previous(0)]], [], shared=2),  # asynchronous scheduling
    ]
    for _ in range(30):
        n = rng.randint(1, 80)
        out.append(
            Step(
                rng.sample(range(1, 10**9), n),
                [[rng.randrange(152064)] * rng.choice([1, 1, 1, 37]) for _ in range(n)],
                [rng.randrange(10**6) for _ in range(rng.randint(0, 5))],
            )
        )
    # long prompts: more than one buffer (the CONTINUED path)
    out.append(Step([1, 2], [list(range(3000)), [5]], [4]))
    return out


def test_round_trip_and_kinds() -> None:
    for msg in _messages(random.Random(0)):
        ints = stepwire.encode(msg)
        assert ints[0] == (stepwire.COMPACT if len(ints) <= stepwire.SLOTS else stepwire.CONTINUED)
        assert stepwire.decode(ints) == msg
    decode_64 = Step(list(range(64)), [[9]] * 64, list(range(8)))
    assert len(stepwire.encode(decode_64)) <= stepwire.SLOTS  # a bs=64 decode step: one broadcast


@pytest.mark.parametrize(
    "build",
    [
        lambda: Step([1], [["a"]], []),
        lambda: Step([1, 2], [[1]], []),
        lambda: Step([True], [[1]], []),
        lambda: Step([2**70], [[1]], []),
        lambda: Heartbeat([2**64]),
        lambda: {"op": "step", "uids": [1], "chunks": [[1]], "release": []},
        lambda: None,
    ],
)
def test_what_is_not_a_message_of_int64s_is_refused(build: Any) -> None:
    """No pickle fallback: anything but a typed message of 64-bit ints is an error at the sender."""
    with pytest.raises(ValueError):
        stepwire.encode(build())


def test_a_malformed_buffer_is_an_error() -> None:
    ints = stepwire.encode(Step([1], [[2, 3]], []))
    with pytest.raises(ValueError):
        stepwire.decode([*ints, 99])
    with pytest.raises(ValueError):
        stepwire.decode([1, 6, 9, 0, 0, 0])
    with pytest.raises(ValueError):
        stepwire.decode([1, 5, 1, 0, 0])  # shorter than a header


def _rank(rank: int, port: int, messages: list[Any], results: Any, timeout_s: float) -> None:
    import torch.distributed as tdist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    group = tdist.new_group(backend="gloo", timeout=dt.timedelta(seconds=timeout_s))
    channel = Channel(DistInfo(rank=rank, world_size=2, local_size=2), group)
    got = [channel.broadcast(m if rank == 0 else None) for m in messages]
    worst = channel.agree(rank)  # across hosts: one all_reduce(MAX) over the control group
    if rank == 0:
        results.put(("rank 0 agreed", worst))
    if rank == 1:
        results.put(got)
        t0 = time.monotonic()
        try:  # rank 0 sends nothing more: the control timeout must fire
            channel.broadcast(None)
            results.put(("no error", time.monotonic() - t0))
        except Exception as exc:
            results.put((type(exc).__name__, time.monotonic() - t0))
    else:
        time.sleep(timeout_s + 8)  # alive but silent


def test_two_rank_gloo_broadcast_and_timeout() -> None:
    messages: list[Any] = _messages(random.Random(1))
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port, timeout_s = free_port(), 3.0
    procs = [ctx.Process(target=_rank, args=(r, port, messages, results, timeout_s)) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        first, second = results.get(timeout=120), results.get(timeout=120)  # from 2 processes: any order
        agreed, got = (first, second) if isinstance(first, tuple) else (second, first)
        assert agreed == ("rank 0 agreed", 1)  # rank 1's outcome (1: OOM) reached rank 0
        assert got == messages
        err, waited = results.get(timeout=60)
        assert err != "no error" and timeout_s - 0.5 <= waited <= timeout_s + 30, (err, waited)
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
