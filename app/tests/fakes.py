"""A model-free engine for fast tests of the scheduler and the HTTP path (no DeepSpeed needed).

`ScriptedEngine.forward` returns logits chosen by each sequence's first prompt token:
    NAN / POSINF   -> that row is all NaN / has a +inf (what a broken model step produces)
    anything else  -> one-hot logits on token (first + steps so far) % VOCAB (a deterministic stream)
Capacity: at most `kv_tokens` tokens per sequence (prompt + generated), like a KV cache; more and
`can_schedule` says no. Real engines are tested against real DeepSpeed elsewhere; this one
only drives the scheduler's policy and error paths.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from tpserve.engines.base import Engine

VOCAB = 64
NAN, POSINF = 1, 2
#: a token the test decoder refuses to decode (a detokenizer failure for one request)
UNDECODABLE = 63


class FakeEngine(Engine):
    """What every model-free engine shares: limits and an empty weight report."""

    name = "fake"
    vocab = VOCAB

    def __init__(self, max_batch: int) -> None:
        self._max_batch = max_batch

    @property
    def max_batch_size(self) -> int:
        return self._max_batch

    @property
    def max_seq_len(self) -> int:
        return 1 << 16

    @property
    def vocab_size(self) -> int:
        return self.vocab

    def weight_report(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"engine": self.name, "max_seq_len": self.max_seq_len}


class ScriptedEngine(FakeEngine):
    name = "scripted"

    def __init__(self, max_batch: int = 8, kv_tokens: int = 1 << 16) -> None:
        super().__init__(max_batch)
        self.kv_tokens = kv_tokens
        self.seqs: dict[int, tuple[int, int]] = {}  # uid -> (first prompt token, tokens held)
        self.forwards = 0

    def forward(self, uids: Sequence[int], chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        self.forwards += 1
        logits = torch.zeros(len(uids), VOCAB)
        for row, (uid, chunk) in enumerate(zip(uids, chunks, strict=True)):
            first, held = self.seqs.get(uid, (chunk[0], 0))
            held += len(chunk)
            if held > self.kv_tokens:
                raise RuntimeError(f"sequence {uid} holds {held} tokens > KV capacity {self.kv_tokens}")
            self.seqs[uid] = (first, held)
            if first == NAN:
                logits[row] = float("nan")
            elif first == POSINF:
                logits[row, 5] = float("inf")
            else:
                logits[row, (first + held) % VOCAB] = 1.0
        return logits

    def release(self, uid: int) -> None:
        self.seqs.pop(uid, None)

    def kv_blocks(self) -> tuple[int, int] | None:
        """A paged cache of 16-token blocks over kv_tokens x max_batch tokens, like fastgen's."""
        used = sum(-(-held // 16) for _, held in self.seqs.values())
        return used, self.kv_tokens * self._max_batch // 16

    def can_schedule(self, uids: Sequence[int], lengths: Sequence[int]) -> bool:
        if len(uids) > self._max_batch:
            return False
        return all(
            self.seqs.get(u, (0, 0))[1] + n <= self.kv_tokens for u, n in zip(uids, lengths, strict=True)
        )


def decode(ids: list[int]) -> str:
    """A toy detokenizer: one letter per token; UNDECODABLE raises (like a broken tokenizer)."""
    if UNDECODABLE in ids:
        raise ValueError(f"token {UNDECODABLE} cannot be decoded")
    return "".join(chr(ord("a") + i % 26) for i in ids)


class ReplayEngine(FakeEngine):
    """forward() returns one-hot logits: sequence uid replays its own token list, one per step
    (bench/serving_overhead.py: the host-side cost of serving without a model)."""

    name = "replay"
    vocab = 2048

    def __init__(self, scripts: dict[int, list[int]], max_batch: int) -> None:
        super().__init__(max_batch)
        self.scripts = scripts  # tokens to replay, keyed by the prompt's first id
        self._pos: dict[int, tuple[list[int], int]] = {}
        self.cpu_s = 0.0  # thread CPU time spent in forward (not serving overhead: subtracted)

    def forward(self, uids: Sequence[int], chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        c0 = time.thread_time()
        logits = torch.zeros(len(uids), self.vocab)
        for row, (uid, chunk) in enumerate(zip(uids, chunks, strict=True)):
            if uid not in self._pos:
                self._pos[uid] = (self.scripts[chunk[0]], 0)
            script, at = self._pos[uid]
            logits[row, script[at % len(script)]] = 1.0
            self._pos[uid] = (script, at + 1)
        self.cpu_s += time.thread_time() - c0
        return logits

    def release(self, uid: int) -> None:
        self._pos.pop(uid, None)
