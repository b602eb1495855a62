"""`python -m tpserve.tools.advice`: which layout suits this model, GPU and network, with the figures
we measured (one sitting each, tests/gpu/results/). serve.yml prints it; it never changes a setting.

    python -m tpserve.tools.advice --model-dir DIR --layout tp_across_nodes --tp 4 --nodes 4 \
        --gpu-gib 22.49 [--latency-ms 0.3] [--gbps 1.2]
    -> {"fits_one_gpu": true, "min_tp": 1, "advice": ["...", ...]}
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tpserve.config import ServeConfig
from tpserve.tools.memory import GIB, ModelShape, default_max_context, fastgen_step_tokens, gib, plan

#: fastgen with CUDA graphs and asynchronous scheduling over HTTP, Qwen2.5-7B shape, 128/128 tokens:
#: the three layouts in one sitting on 2x H200 (tests/gpu/layouts.sh; 64 clients; replicas: two TP=1
#: servers, 32 clients each).
MEASURED: dict[str, Any] = {
    "source": "tests/gpu/results/2026-11-30-s10-2xh200-async (2x H200, 7B, fastgen, graphs, "
    "asynchronous scheduling, one sitting)",
    "replicas_itl_ms": 4.85,
    "replicas_tok_s_64": 8156,
    "tp2_node_itl_ms": 3.53,
    "tp2_node_tok_s_64": 8334,
    "tp2_across_itl_ms": 5.77,
    "tp2_across_tok_s_64": 1917,
}


def min_tp(shape: ModelShape, gpu_bytes: int, max_batch_size: int, max_context: int) -> int | None:
    """The smallest TP size (1, 2, 4, 8) at which one rank's share fits its GPU; None: not even 8."""
    for tp in (1, 2, 4, 8):
        if shape.kv_heads % tp == 0:
            p = plan(shape, tp, gpu_bytes, fastgen_step_tokens(max_batch_size), max_batch_size, max_context)
            if p.problem is None:
                return tp
    return None


def advise(
    cfg: dict[str, Any],
    layout: str,
    tp: int,
    nodes: int,
    gpu_gib: float = 0.0,
    latency_ms: float = 0.0,
    gbps: float = 0.0,
    max_batch_size: int = ServeConfig.max_batch_size,
) -> dict[str, Any]:
    shape = ModelShape.from_config(cfg)
    weights = gib(shape.weight_bytes(1))
    advice: list[str] = []
    m = MEASURED
    need = min_tp(shape, int(gpu_gib * GIB), max_batch_size, default_max_context(cfg)) if gpu_gib else None
    if gpu_gib and need == 1:
        if layout == "tp_across_nodes" and nodes > 1:
            ratio = m["replicas_tok_s_64"] / m["tp2_across_tok_s_64"]
            advice.append(
                f"The model ({weights} GiB in 16-bit) fits one GPU ({gpu_gib} GiB): tpserve_layout=replicas "
                f"serves {nodes} independent copies and no token crosses the network. Measured: two TP=1 "
                f"replicas give about {ratio:.1f}x the throughput of TP=2 across two nodes at 64 clients "
                f"({m['replicas_tok_s_64']} tok/s vs {m['tp2_across_tok_s_64']}; {m['source']})."
            )
        else:
            advice.append(
                f"The model ({weights} GiB in 16-bit) fits one GPU ({gpu_gib} GiB): {layout} with TP={tp} "
                "is a good fit; replicas scale throughput with the number of nodes."
            )
    elif gpu_gib and need is None:
        advice.append(f"The model ({weights} GiB in 16-bit) does not fit {gpu_gib} GiB GPUs even at TP=8.")
    elif gpu_gib:
        advice.append(
            f"The model ({weights} GiB in 16-bit) needs TP >= {need} on {gpu_gib} GiB GPUs"
            + (f" (configured: TP={tp})." if tp >= need else f", configured TP={tp} is too small.")
        )
    if layout == "tp_across_nodes" and nodes > 1:
        advice.append(
            f"TP across nodes: every token waits for {2 * shape.layers} all-reduces "
            f"({shape.layers} layers x 2). Measured over sockets between two emulated nodes: "
            f"{m['tp2_across_itl_ms']} ms/token vs {m['tp2_node_itl_ms']} in one node ({m['source']})."
        )
        if latency_ms:
            floor = 2 * shape.layers * latency_ms
            advice.append(
                f"This cluster's network: {latency_ms} ms per all-reduce"
                + (f", {gbps} GB/s" if gbps else "")
                + f" -> at least {floor:.1f} ms per token in network round trips alone."
            )
    return {"fits_one_gpu": need == 1 if gpu_gib else None, "min_tp": need, "advice": advice}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tpserve.tools.advice", description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--layout", required=True, choices=["tp_across_nodes", "replicas"])
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--nodes", type=int, default=1)
    ap.add_argument("--gpu-gib", type=float, default=0.0, help="one GPU's memory; 0: not known (CPU)")
    ap.add_argument(
        "--latency-ms", type=float, default=0.0, help="measured all-reduce latency, master<->worker"
    )
    ap.add_argument("--gbps", type=float, default=0.0, help="measured bandwidth, GB/s")
    a = ap.parse_args(argv)
    cfg = json.loads((Path(a.model_dir) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    print(json.dumps(advise(cfg, a.layout, a.tp, a.nodes, a.gpu_gib, a.latency_ms, a.gbps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
