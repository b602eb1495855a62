"""Greedy tokens with CUDA graphs == without, batch composition held fixed (issue 13.1).

One FastGen engine (TP=1, the 7B shape from env.sh): 8 prompts prefilled together, then 31 decode
steps of all 8 (graphs: the first decode step at batch 8 runs eagerly and is captured, the rest
replay); the same again with the graphs turned off. Over HTTP the batches depend on arrival
times, so only this engine-level run pins them.   bash tests/gpu/graphs_equal.sh
"""

import json
import os

from tpserve.engines import fastgen
from tpserve.engines.base import EngineOptions

options = EngineOptions(model_dir=os.environ["MODEL_DIR"], dtype="bfloat16", device="cuda")
eng = fastgen.create_engine(options)
prompts = [[i * 1000, i * 1000 + 7, 42, i * 333] for i in range(1, 9)]


def greedy(base_uid: int, rows: int) -> list[list[int]]:
    uids = [base_uid + i for i in range(rows)]
    logits = eng.forward(uids, prompts[:rows])
    out = [[t] for t in logits.argmax(-1).tolist()]
    for _ in range(31):
        logits = eng.forward(uids, [[o[-1]] for o in out])
        for o, t in zip(out, logits.argmax(-1).tolist(), strict=True):
            o.append(t)
    for u in uids:
        eng.release(u)
    return out


graphs = eng.graphs
with_graphs = {rows: greedy(100 * rows, rows) for rows in (8, 1)}
info = graphs.describe()
graphs.off_reason = "turned off for the comparison"
eager = {rows: greedy(10_000 + 100 * rows, rows) for rows in (8, 1)}
print(
    json.dumps(
        {
            "batch8_rows_equal": sum(a == b for a, b in zip(with_graphs[8], eager[8], strict=True)),
            "batch1_equal": with_graphs[1] == eager[1],
            "graphs": info,
        }
    )
)
