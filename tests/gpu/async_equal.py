"""Asynchronous scheduling on the device == host tokens, and what it saves per step (issue 13).

One FastGen engine (TP=1, the 7B shape from env.sh, CUDA graphs on), the same step sequence twice:
host mode reads every step's greedy tokens to the host and feeds them back (the synchronous loop);
device mode names "the previous step's pick of row r" (negative ids) and reads the picks one step
late, as tpserve's scheduler does: rows reordered (the general index copy), a row released, a new
prompt joining (a mixed prefill + decode step). Then steady decode at batch 1 and 64, host vs
device mode, ms per step.   bash tests/gpu/async_equal.sh
"""

import json
import os
import time

import torch
from tpserve.control.messages import from_previous
from tpserve.engines import fastgen
from tpserve.engines.base import EngineOptions

options = EngineOptions(
    model_dir=os.environ["MODEL_DIR"], dtype="bfloat16", device="cuda", max_batch_size=64
)
eng = fastgen.create_engine(options)
eng.keep_picks = True
prompts = [[i * 1000, i * 1000 + 7, 42, i * 333][: 1 + i % 4] + [5] * i for i in range(1, 9)]


def run(base: int, device: bool, steps: int = 40) -> dict[int, list[int]]:
    uids = [base + i for i in range(8)]
    out: dict[int, list[int]] = {u: [] for u in uids}
    pending: list[tuple[list[int], object]] = []

    def take(step_uids: list[int], logits: torch.Tensor) -> None:
        if device:
            pending.append((step_uids, eng.picks_to_host(len(step_uids))))
            if len(pending) > 1:  # the step before: read while this one runs
                done_uids, picks = pending.pop(0)
                for u, t in zip(done_uids, picks.wait()[0], strict=True):
                    out[u].append(t)
        else:
            for u, t in zip(step_uids, logits.argmax(-1).tolist(), strict=True):
                out[u].append(t)

    take(list(uids), eng.run_step(uids, prompts))
    rows = {u: i for i, u in enumerate(uids)}
    for step in range(steps):
        chunks: list[list[int]] = []
        if step == 12:
            uids = uids[::-1]  # the same sequences in another order: the general index copy
        if step == 24:
            eng.release(uids.pop())
        if step == 30:
            uids.append(base + 99)
            out[base + 99] = []
        for u in uids:
            if u not in rows:
                chunks.append([7, 8, 9, 10, 11])
            elif device:
                chunks.append([from_previous(rows[u])])
            else:
                chunks.append([out[u][-1]])
        logits = eng.run_step(uids, chunks)
        take(list(uids), logits)
        rows = {u: i for i, u in enumerate(uids)}
    for done_uids, picks in pending:
        for u, t in zip(done_uids, picks.wait()[0], strict=True):
            out[u].append(t)
    for u in uids:
        eng.release(u)
    return out


def steady(base: int, batch: int, device: bool, steps: int = 64) -> float:
    """ms per decode step at a fixed batch (after 8 warm-up steps: graph captured)."""
    uids = [base + i for i in range(batch)]
    logits = eng.run_step(uids, [[100 + i, 200 + i] for i in range(batch)])
    last = logits.argmax(-1).tolist()
    pending = None
    for step in range(steps + 8):
        if step == 8:
            torch.cuda.synchronize()
            t0 = time.perf_counter()
        if device:
            logits = eng.run_step(uids, [[from_previous(i)] for i in range(batch)])
            picks = eng.picks_to_host(batch)
            if pending is not None:
                pending.wait()
            pending = picks
        else:
            logits = eng.run_step(uids, [[t] for t in last])
            last = logits.argmax(-1).tolist()
    if pending is not None:
        pending.wait()
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) * 1000 / steps
    for u in uids:
        eng.release(u)
    return round(ms, 3)


host = run(1000, device=False)
dev = run(2000, device=True)
pairs = [(host[1000 + k], dev[2000 + k]) for k in [*range(8), 99]]
result = {
    "sequences_equal": sum(a == b for a, b in pairs),
    "sequences": len(pairs),
    "tokens_per_sequence": [len(a) for a, _ in pairs],
    "first_mismatch": next(({"host": a, "device": b} for a, b in pairs if a != b), None),
}
for batch in (1, 64):
    result[f"batch{batch}_ms_per_step_host"] = steady(10_000, batch, device=False)
    result[f"batch{batch}_ms_per_step_device"] = steady(20_000, batch, device=True)
result["engine"] = {k: eng.describe()[k] for k in ("async_scheduling", "cuda_graphs")}
print(json.dumps(result))
