"""The shared-memory mailbox (tpserve.control.mailbox) between two real processes: order, acknowledgement,
the 'via gloo' marker, capacity, timeouts, and no file left in /dev/shm."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import pytest

from tpserve.control import stepwire
from tpserve.control.mailbox import Mailbox, MailboxTimeout
from tpserve.control.messages import Heartbeat, Step

CAPACITY = 64


def _reader(path: str, n: int, delay_s: float, out: mp.Queue) -> None:
    box = Mailbox(path, world_size=2, rank=1, capacity=CAPACITY, create=False)
    got = []
    for _ in range(n):
        got.append(box.receive(timeout_s=10))
        time.sleep(delay_s)
    out.put(got)


def _start_reader(path: str, n: int, delay_s: float = 0.0) -> tuple[mp.Process, mp.Queue]:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    proc = ctx.Process(target=_reader, args=(path, n, delay_s, out))
    proc.start()
    return proc, out


@pytest.fixture
def box_path(tmp_path: Path) -> str:
    return str(tmp_path / "mailbox")


def test_messages_arrive_in_order_and_the_writer_waits_for_the_reader(box_path: str) -> None:
    writer = Mailbox(box_path, world_size=2, rank=0, capacity=CAPACITY, create=True)
    messages = [
        stepwire.encode(Step([1, 2], [[5, 6, 7], [9]], [])),
        None,  # "read it from gloo"
        stepwire.encode(Heartbeat([1])),
        [2**62, -(2**62), 0],
    ]
    reader, out = _start_reader(box_path, len(messages), delay_s=0.2)
    t0 = time.monotonic()
    for m in messages:
        writer.send(m, timeout_s=10)
    waited = time.monotonic() - t0
    got = out.get(timeout=30)
    reader.join(timeout=10)
    assert got == messages
    assert stepwire.decode(got[0]).chunks == [[5, 6, 7], [9]]
    # the reader sleeps 0.2 s after each message: the writer may not overwrite an unread one
    assert waited >= 0.5, f"writer did not wait for the reader's acknowledgements ({waited:.2f} s)"
    writer.unlink()
    assert not os.path.exists(box_path)


def test_too_big_a_message_is_refused(box_path: str) -> None:
    writer = Mailbox(box_path, world_size=2, rank=0, capacity=CAPACITY, create=True)
    with pytest.raises(ValueError, match="capacity"):
        writer.send(list(range(CAPACITY + 1)), timeout_s=1)
    writer.unlink()


def test_a_missing_peer_times_out_with_a_reason(box_path: str) -> None:
    writer = Mailbox(box_path, world_size=2, rank=0, capacity=CAPACITY, create=True)
    reader = Mailbox(box_path, world_size=2, rank=1, capacity=CAPACITY, create=False)
    writer.unlink()
    with pytest.raises(MailboxTimeout, match="rank 0's next message"):
        reader.receive(timeout_s=0.3)
    writer.send([1], timeout_s=1)  # nobody reads it
    with pytest.raises(MailboxTimeout, match="rank 1 to read"):
        writer.send([2], timeout_s=0.3)
    assert reader.receive(timeout_s=1) == [1]
    writer.send([2], timeout_s=1)
    assert reader.receive(timeout_s=1) == [2]


def test_step_outcomes_come_back_and_rank0_waits_for_every_rank(box_path: str) -> None:
    """Channel.agree on one host: each rank writes its outcome of the message it ran; rank 0 waits
    for all of them (the worst wins) and times out with a reason when one never comes."""
    writer = Mailbox(box_path, world_size=3, rank=0, capacity=CAPACITY, create=True)
    readers = [Mailbox(box_path, world_size=3, rank=r, capacity=CAPACITY, create=False) for r in (1, 2)]
    writer.unlink()
    worst = []
    for outcomes in ((0, 0), (1, 0), (0, 1)):
        writer.send(stepwire.encode(Heartbeat()), timeout_s=1)
        with pytest.raises(MailboxTimeout, match="rank 1 to finish message"):
            writer.outcome(timeout_s=0.05)  # nobody ran it yet
        for box, outcome in zip(readers, outcomes, strict=True):
            box.receive(timeout_s=1)
            box.report(outcome)
        worst.append(writer.outcome(timeout_s=1))
    assert worst == [0, 1, 1]
    writer.send(stepwire.encode(Heartbeat()), timeout_s=1)
    readers[0].receive(timeout_s=1)
    readers[0].report(0)
    with pytest.raises(MailboxTimeout, match="rank 2 to finish message 4"):
        writer.outcome(timeout_s=0.2)
