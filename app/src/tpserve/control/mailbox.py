"""A shared-memory mailbox for rank 0's step messages to the other ranks of the SAME host.

A gloo broadcast of the step message cost 0.4-0.7 ms per step on 2xH200 (TCP loopback, a
collective), ~7% of a 6 ms decode step. Ranks that share a host (FastGen always, autotp on one
node) read it from shared memory instead: rank 0 writes the encoded message (tpserve.control.stepwire) and
bumps a sequence number; each rank polls the number, reads the message, checks its CRC and writes
its acknowledgement; rank 0 writes the next message only once every rank has acknowledged the last.

Layout (int64 slots): [seq, n, crc, 0..] (HEADER) | ack of rank r at HEADER + r | outcome of rank r
at HEADER + world_size + r | payload.
n = -1 means "this message is too big or not encodable: read it from the gloo channel".
The outcome slot is how ranks agree on a step without a collective: after running message `seq` a
rank writes seq * OUTCOMES + its outcome (0 ok, 1 CUDA OOM); rank 0 waits until every rank wrote
it for the message it sent last (`outcome`).
The file lives in /dev/shm only while the ranks attach: rank 0 unlinks it once all have mapped it,
so nothing is left behind even when a rank is SIGKILLed.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import time
import zlib
from array import array
from collections.abc import Callable

HEADER = 8
VIA_GLOO = -1
#: outcome codes fit below this (seq * OUTCOMES + outcome in one int64 slot)
OUTCOMES = 8


class MailboxTimeout(RuntimeError):
    pass


class Mailbox:
    def __init__(self, path: str, world_size: int, rank: int, capacity: int, create: bool) -> None:
        self.path = path
        self.world_size = world_size
        self.rank = rank
        self.capacity = capacity
        self._done = HEADER + world_size
        self._base = HEADER + 2 * world_size
        size = 8 * (self._base + capacity)
        if create:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a stale file of a run killed while attaching
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.ftruncate(fd, size)
        else:
            fd = os.open(path, os.O_RDWR)
        try:
            self._mm = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self._bytes = memoryview(self._mm)
        self._q = self._bytes.cast("q")
        self.seq = 0  # the last message written (rank 0) or read (other ranks)

    def unlink(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    # -- rank 0 ------------------------------------------------------------------------------
    def send(self, ints: list[int] | None, timeout_s: float, spin_s: float = 0.0) -> None:
        """Publish one message (None: 'read it from gloo'); waits until every rank read the last."""
        q = self._q
        for r in range(1, self.world_size):
            if q[HEADER + r] != self.seq:
                self._wait(lambda r=r: q[HEADER + r] == self.seq, timeout_s, spin_s, f"rank {r} to read")
        if ints is None:
            n, crc = VIA_GLOO, 0
        else:
            payload = array("q", ints)
            n = len(payload)
            if n > self.capacity:
                raise ValueError(f"message of {n} ints > mailbox capacity {self.capacity}")
            q[self._base : self._base + n] = memoryview(payload)
            crc = zlib.crc32(payload)
        q[1] = n
        q[2] = crc
        self.seq += 1
        q[0] = self.seq  # last: a reader that sees it sees the rest (checked by the CRC)

    # -- other ranks -------------------------------------------------------------------------
    def receive(self, timeout_s: float, spin_s: float = 0.0) -> list[int] | None:
        """The next message's ints, or None when it travels over gloo."""
        q = self._q
        want = self.seq + 1
        if q[0] != want:
            self._wait(lambda: q[0] == want, timeout_s, spin_s, "rank 0's next message")
        for _ in range(1000):  # a torn read (weakly ordered CPUs) shows as a CRC mismatch: read again
            n, crc = q[1], q[2]
            if n == VIA_GLOO:
                ints = None
                break
            start = 8 * self._base
            if zlib.crc32(self._bytes[start : start + 8 * n]) == crc:
                ints = q[self._base : self._base + n].tolist()
                break
        else:
            raise RuntimeError(f"mailbox message {want} failed its CRC 1000 times")
        self.seq = want
        q[HEADER + self.rank] = want
        return ints

    def outcome(self, timeout_s: float, spin_s: float = 0.0) -> int:
        """The worst outcome any other rank reported for the message sent last (waits for all)."""
        q, worst = self._q, 0
        for r in range(1, self.world_size):
            slot = self._done + r
            if q[slot] // OUTCOMES != self.seq:
                self._wait(
                    lambda slot=slot: q[slot] // OUTCOMES == self.seq,
                    timeout_s,
                    spin_s,
                    f"rank {r} to finish message {self.seq}",
                )
            worst = max(worst, q[slot] % OUTCOMES)
        return worst

    # -- other ranks: after running the message read last -----------------------------------
    def report(self, outcome: int) -> None:
        if not 0 <= outcome < OUTCOMES:
            raise ValueError(f"outcome {outcome} not in 0..{OUTCOMES - 1}")
        self._q[self._done + self.rank] = self.seq * OUTCOMES + outcome

    # -- both --------------------------------------------------------------------------------
    @staticmethod
    def _wait(ready: Callable[[], bool], timeout_s: float, spin_s: float, what: str) -> None:
        """Busy-poll for spin_s (lowest latency), then sleep-poll (50 us .. 1 ms) until timeout_s."""
        start = time.monotonic()
        while time.monotonic() - start < spin_s:
            for _ in range(200):
                if ready():
                    return
        pause = 50e-6
        while not ready():
            if time.monotonic() - start > timeout_s:
                raise MailboxTimeout(f"waited {timeout_s:.0f} s for {what} (dead peer?)")
            time.sleep(pause)
            pause = min(pause * 2, 1e-3)
