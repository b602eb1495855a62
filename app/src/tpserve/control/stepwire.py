"""The one codec of the rank protocol (tpserve.control.messages): int64s only, never a pickle.

Every message is ONE broadcast of a pre-sized int64 tensor of `SLOTS` entries:

    [kind, total, op, n, r, shared, uids[n], chunk_lengths[n], release[r], tokens(sum of lengths)]

kind = COMPACT: the whole message is in the buffer; CONTINUED: `total` > SLOTS (a long prompt),
the rest follows in a second int64 broadcast of exactly total - SLOTS entries.
"""

from __future__ import annotations

from tpserve.control.messages import Heartbeat, Message, Recover, Shutdown, Step

SLOTS = 1024  # 8 KiB: a decode step of up to 338 sequences (plus releases) fits in one broadcast
COMPACT, CONTINUED = 1, 2
HEADER = 6
OPS: dict[type, int] = {Step: 1, Heartbeat: 2, Shutdown: 3, Recover: 4}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _check(values: list[int], what: str) -> list[int]:
    for v in values:
        if type(v) is not int or not INT64_MIN <= v <= INT64_MAX:
            raise ValueError(f"{what}: {v!r} is not a 64-bit integer")
    return values


def encode(message: Message) -> list[int]:
    """The message as ints (kind COMPACT or CONTINUED set from its length); ValueError if a value
    is not a 64-bit integer (the scheduler only sends ids and token ids)."""
    op = OPS.get(type(message))
    if op is None:
        raise ValueError(f"not a control message: {type(message).__name__}")
    release = _check(list(message.release), "release")
    shared = 0
    if isinstance(message, Step):
        uids = _check(list(message.uids), "uids")
        chunks = [_check(list(c), "chunk") for c in message.chunks]
        shared = message.shared
    else:
        uids, chunks = [], []
    out = [0, 0, op, len(uids), len(release), shared, *uids, *(len(c) for c in chunks), *release]
    for c in chunks:
        out.extend(c)
    out[0] = COMPACT if len(out) <= SLOTS else CONTINUED
    out[1] = len(out)
    return out


def decode(ints: list[int]) -> Message:
    """Inverse of encode (ints: the whole message, header included)."""
    if len(ints) < HEADER:
        raise ValueError(f"malformed control message: {len(ints)} ints, a header needs {HEADER}")
    op, n, r, shared = ints[2], ints[3], ints[4], ints[5]
    at = HEADER
    uids = ints[at : at + n]
    lengths = ints[at + n : at + 2 * n]
    release = ints[at + 2 * n : at + 2 * n + r]
    at += 2 * n + r
    message: Message
    if op == OPS[Step]:
        chunks = []
        for length in lengths:
            chunks.append(ints[at : at + length])
            at += length
        message = Step(uids, chunks, release, shared)
    elif op == OPS[Heartbeat]:
        message = Heartbeat(release)
    elif op == OPS[Shutdown]:
        message = Shutdown(release)
    elif op == OPS[Recover]:
        message = Recover(release)
    else:
        raise ValueError(f"malformed control message: op {op}")
    if at != len(ints):
        raise ValueError(f"malformed control message: {len(ints)} ints, {at} used")
    return message
