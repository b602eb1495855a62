"""A lone sequence that outgrows the KV cache ends with finish_reason "length", never a crash, for
both engines' capacity signals under the real Scheduler (world size 1):

- fastgen: the real FastGenEngine capacity code (can_schedule, new_blocks, forward's checks,
  release) over a CPU stand-in for DeepSpeed v2's paged block pool (`_BlockPool`: the pool FastGen
  allocates, which raises if a step would need more blocks than are free);
- autotp: the real engine (DeepSpeed init_inference, TP=1, CPU) whose cache ends at max_seq_len.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import fakes
import torch
from test_hostile_scheduler import Running

from tpserve.core.sampling import SamplingParams
from tpserve.engines.fastgen import FastGenEngine, FastGenSettings

LONG = SamplingParams(max_new_tokens=500, ignore_eos=True)


def letters(ids: list[int]) -> str:  # a detokenizer that takes any id
    return "".join(chr(ord("a") + i % 26) for i in ids)


class _BlockPool:
    """What FastGenEngine uses of DeepSpeed's InferenceEngineV2: free_blocks, put, flush; blocks of
    `block` tokens; logits like fakes.ScriptedEngine (one-hot on (first token + tokens held) % VOCAB)."""

    def __init__(self, blocks: int, block: int) -> None:
        self.free_blocks = torch.tensor([blocks])
        self.block = block
        self.held: dict[int, tuple[int, int, int]] = {}  # uid -> (first token, tokens, blocks)

    def put(
        self, uids: Sequence[int], tokens: Sequence[torch.Tensor], do_checks: bool = True
    ) -> torch.Tensor:
        logits = torch.zeros(len(uids), fakes.VOCAB)
        for row, (uid, t) in enumerate(zip(uids, tokens, strict=True)):
            first, n, blocks = self.held.get(uid, (int(t[0]), 0, 0))
            n += t.numel()
            need = -(-n // self.block) - blocks
            if need > int(self.free_blocks[0]):
                raise RuntimeError(f"KV pool exhausted: uid {uid} needs {need} blocks")
            self.free_blocks[0] -= need
            self.held[uid] = (first, n, blocks + need)
            logits[row, (first + n) % fakes.VOCAB] = 1.0
        return logits

    def flush(self, uid: int) -> None:
        _, _, blocks = self.held.pop(uid)
        self.free_blocks[0] += blocks


class PagedFastGen(FastGenEngine):
    """FastGenEngine's own capacity and step code over _BlockPool (no GPU, no DeepSpeed v2 model)."""

    def __init__(self, blocks: int, block: int = 16, max_batch: int = 4) -> None:  # no super(): no GPU
        self.settings = FastGenSettings(
            model_dir="", max_batch_tokens=64, max_batch_sequences=max_batch,
            max_tracked_sequences=2 * max_batch, max_context=4096, cuda_graphs=False,
        )  # fmt: skip
        self.config = {"vocab_size": fakes.VOCAB}
        self.kv_block_size, self.q_block, self.max_atoms = block, 64, 1 << 20
        self._lengths: dict[int, int] = {}
        self._engine = _BlockPool(blocks, block)
        self.kv_blocks_total = blocks
        self._sources = {}  # asynchronous scheduling's state (no device here: never used)
        self.inputs = SimpleNamespace(take=None, wait_inputs=lambda: None)

    def weight_report(self) -> dict:
        return {}

    def describe(self) -> dict:
        return {"engine": "paged-fastgen"}


def test_fastgen_lone_sequence_at_the_end_of_the_block_pool_ends_with_length() -> None:
    engine = PagedFastGen(blocks=2)  # 32 tokens in all
    r = Running(engine, decode=letters)
    try:
        events, req = r.run_one(list(range(3, 13)), LONG)  # 10 prompt tokens
        assert events[-1].finish_reason == "length", events[-1]
        # the pool held 32 tokens: the prompt and every generated token but the last one sampled
        assert 10 + len(req.output_ids) == 33, len(req.output_ids)
        assert engine.kv_blocks() == (2, 2)  # full until the next message releases it
        too_big, _ = r.run_one(list(range(3, 40)), LONG)  # 37 prompt tokens > the whole pool
        assert too_big[-1].finish_reason == "error" and "KV cache" in (too_big[-1].error or "")
        again, req = r.run_one([5, 6], SamplingParams(max_new_tokens=4))
        assert again[-1].finish_reason == "length" and len(req.output_ids) == 4  # the pool was freed
    finally:
        r.stop()
    assert r.crash is None, r.crash
    assert engine._engine.held == {} and engine.kv_blocks() == (0, 2)


def test_fastgen_two_sequences_fill_the_pool_the_newest_is_preempted_the_oldest_goes_on() -> None:
    engine = PagedFastGen(blocks=4)  # 64 tokens
    r = Running(engine, decode=letters)
    try:
        (a, ra), (b, _) = r.run_many([(list(range(3, 13)), LONG), (list(range(20, 30)), LONG)])
        assert b[-1].finish_reason == "error" and b[-1].error_kind == "capacity", b[-1]  # 503: retry
        assert "preempted" in (b[-1].error or "")
        # the oldest was not ended with the preempted one's blocks still counted as taken: once they
        # were freed (the next message), it grew alone to the end of the pool
        assert a[-1].finish_reason == "length", a[-1]
        assert 10 + len(ra.output_ids) == 65, len(ra.output_ids)
    finally:
        r.stop()
    assert r.crash is None, r.crash


def test_autotp_lone_sequence_at_max_seq_len_ends_with_length(model_dir: Path) -> None:
    from tpserve.engines import EngineOptions, create

    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    engine = create("autotp", EngineOptions(model_dir=str(model_dir), dtype="float32", max_seq_len=24))
    r = Running(engine, decode=letters)  # type: ignore[arg-type]
    try:
        events, req = r.run_one(list(range(100, 110)), LONG)
        assert events[-1].finish_reason == "length", events[-1]
        assert 10 + len(req.output_ids) == 24
        assert r.sched.metrics.oom_steps._value.get() == 0
    finally:
        r.stop()
    assert r.crash is None, r.crash


def test_fastgen_three_sequences_fill_the_pool_only_the_newest_is_preempted_then_the_next() -> None:
    """Three sequences outgrow the pool together: the newest is preempted and its blocks are freed
    before anything else is decided, so the middle one goes on (before: it was preempted in the same
    step, the newest's blocks still counted as taken) until IT no longer fits beside the oldest."""
    engine = PagedFastGen(blocks=6)  # 96 tokens: 3 sequences of 32 fill it
    r = Running(engine, decode=letters)
    try:
        (a, ra), (b, rb), (c, rc) = r.run_many(
            [(list(range(3, 13)), LONG), (list(range(20, 30)), LONG), (list(range(40, 50)), LONG)]
        )
        for events in (b, c):
            assert events[-1].finish_reason == "error" and "preempted" in (events[-1].error or ""), events[-1]
        # c went when the three no longer fitted (about 32 tokens each); b went on to about 48 tokens,
        # when two no longer fitted, and a to the end of the pool
        assert 10 + len(rc.output_ids) <= 33, len(rc.output_ids)
        assert 10 + len(rb.output_ids) >= 47, (len(rb.output_ids), len(rc.output_ids))
        assert a[-1].finish_reason == "length", a[-1]
        assert 10 + len(ra.output_ids) == 97, len(ra.output_ids)
    finally:
        r.stop()
    assert r.crash is None, r.crash
