"""autotp in-process (TP=1, real deepspeed.init_inference, CPU): batched decode == one at a time."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from tpserve.engines import EngineOptions, create


def _greedy(model_dir: Path, batch_decode: bool) -> tuple[list[list[int]], torch.Tensor, dict]:
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    engine = create(
        "autotp", EngineOptions(model_dir=str(model_dir), dtype="float32", batch_decode=batch_decode)
    )
    prompts = [[5, 6, 7], [100, 200, 300, 400, 500, 600, 700], [9], [42] * 20]
    uids = [11, 12, 13, 14]
    logits = engine.forward(uids, prompts)
    seqs = [[t] for t in logits.argmax(-1).tolist()]
    history = [logits]
    for step in range(12):
        if step == 6:  # a sequence leaves, a new one joins mid-way (ragged batch)
            engine.release(13)
            uids, seqs = [11, 12, 14, 15], [seqs[0], seqs[1], seqs[3], []]
            first = engine.forward([15], [[7, 7, 7, 7]])
            seqs[3].append(int(first.argmax(-1)))
        logits = engine.forward(uids, [[s[-1]] for s in seqs])
        history.append(logits)
        for s, t in zip(seqs, logits.argmax(-1).tolist(), strict=True):
            s.append(t)
    return seqs, torch.cat(history), engine.describe()


def test_batched_decode_matches_sequential(model_dir: Path) -> None:
    loop_tokens, loop_logits, loop_info = _greedy(model_dir, batch_decode=False)
    batch_tokens, batch_logits, batch_info = _greedy(model_dir, batch_decode=True)
    assert loop_info["batched_decode"] is False and batch_info["batched_decode"] is True
    assert batch_tokens == loop_tokens
    assert torch.allclose(batch_logits, loop_logits, atol=1e-3, rtol=1e-4)


def test_slot_cache_across_buckets_with_holes(model_dir: Path) -> None:
    """Positions cross the 64-token span bucket, a hole sits among the slots (rows bucket 4 with
    slot 1 free: its row computes garbage into the scratch column) and a sequence joins into the
    hole: every logit equals the per-sequence path's."""
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

    def run(batch_decode: bool) -> torch.Tensor:
        engine = create(
            "autotp",
            EngineOptions(
                model_dir=str(model_dir), dtype="float32", batch_decode=batch_decode, max_batch_size=4
            ),
        )
        out = [engine.forward([1, 2, 3], [[3] * 50, [4] * 5, [5] * 60])]
        last = {u: int(t) for u, t in zip([1, 2, 3], out[0].argmax(-1).tolist(), strict=True)}
        engine.release(2)
        del last[2]
        for step in range(20):
            if step == 10:
                first = engine.forward([4], [[6] * 9])
                last[4] = int(first.argmax(-1))
                out.append(first)
            uids = sorted(last)
            logits = engine.forward(uids, [[last[u]] for u in uids])
            out.append(logits)
            last = {u: int(t) for u, t in zip(uids, logits.argmax(-1).tolist(), strict=True)}
        info = engine.describe()
        assert info["batched_decode"] is batch_decode
        return torch.cat([o.reshape(-1) for o in out])

    assert torch.allclose(run(True), run(False), atol=1e-3, rtol=1e-4)
