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
