"""Compact wire format of the rank protocol's messages: one int64 tensor instead of a pickle.

`broadcast_object_list` pickles the message and runs two collectives (sizes, then bytes) plus
tensor conversions on every step. The scheduler's messages are small dicts of ints, so they are
sent as ONE broadcast of a pre-sized int64 tensor of `SLOTS` entries:

    [kind, total, op, n, r, uids[n], chunk_lengths[n], release[r], tokens(sum of lengths)]

kind = COMPACT: the whole message is in the buffer; CONTINUED: `total` > SLOTS (a long prompt),
the rest follows in a second int64 broadcast of exactly total - SLOTS entries; PICKLED: the message
is not of that shape, a `broadcast_object_list` follows (the old path).
"""

from __future__ import annotations

from typing import Any

SLOTS = 1024  # 8 KiB: a decode step of up to 338 sequences (plus releases) fits in one broadcast
COMPACT, CONTINUED, PICKLED = 1, 2, 3
HEADER = 5
OPS = {"step": 1, "heartbeat": 2, "shutdown": 3}
OP_NAMES = {v: k for k, v in OPS.items()}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _ints(values: Any) -> list[int] | None:
    if not isinstance(values, list | tuple):
        return None
    out = []
    for v in values:
        if type(v) is not int or not INT64_MIN <= v <= INT64_MAX:
            return None
        out.append(v)
    return out


def encode(message: Any) -> list[int] | None:
    """The message as ints (kind COMPACT or CONTINUED set from its length); None if not encodable."""
    if not isinstance(message, dict) or message.get("op") not in OPS:
        return None
    if set(message) - {"op", "uids", "chunks", "release"}:
        return None
    release = _ints(message.get("release", ()))
    uids = _ints(message.get("uids", ()))
    raw_chunks = message.get("chunks", ())
    if release is None or uids is None or not isinstance(raw_chunks, list | tuple):
        return None
    chunks = [_ints(c) for c in raw_chunks]
    if len(chunks) != len(uids) or any(c is None for c in chunks):
        return None
    if message["op"] != "step" and ("uids" in message or "chunks" in message):
        return None
    lengths = [len(c) for c in chunks]  # type: ignore[arg-type]
    out = [0, 0, OPS[message["op"]], len(uids), len(release), *uids, *lengths, *release]
    for c in chunks:
        out.extend(c)  # type: ignore[arg-type]
    out[0] = COMPACT if len(out) <= SLOTS else CONTINUED
    out[1] = len(out)
    return out


def decode(ints: list[int]) -> dict[str, Any]:
    """Inverse of encode (ints: the whole message, header included)."""
    op, n, r = ints[2], ints[3], ints[4]
    at = HEADER
    uids = ints[at : at + n]
    lengths = ints[at + n : at + 2 * n]
    release = ints[at + 2 * n : at + 2 * n + r]
    at += 2 * n + r
    message: dict[str, Any] = {"op": OP_NAMES[op], "release": release}
    if OP_NAMES[op] == "step":
        chunks = []
        for length in lengths:
            chunks.append(ints[at : at + length])
            at += length
        message["uids"], message["chunks"] = uids, chunks
    if at != len(ints):
        raise ValueError(f"malformed step message: {len(ints)} ints, {at} used")
    return message
