"""NCCL over TCP sockets for decode-sized all-reduces: what one costs, whether NCCL's knobs help.

TP=2 decode of the Qwen2.5-7B shape all-reduces one hidden vector per row twice per layer: 56
all-reduces of 3584 x fp16 (7 KB) per token at batch 1. Across nodes without RDMA, NCCL goes over
sockets, and those 56 small all-reduces are what makes TP across nodes slower than TP in one node.
Two "nodes" (one process per GPU, each seeing only its GPU, local rank 0, NCCL over sockets only,
like tests/gpu/across_nodes.sh) per candidate setting; each reports one all-reduce's time eagerly
(synchronized each time, and back to back) and inside a CUDA graph of 56 (how fastgen's decode graph
runs them). GPU host only (device tool, kind nvidia-h200-x2; torch only, no wheels needed):

    python3 bench/nccl_small.py        # every candidate; stage lines of each rank in /tmp/nd-*.err

Session 7 (2x H200, loopback TCP): 55-57 us per all-reduce in a graph whatever the protocol or the
channel count (tests/gpu/results/2026-11-30-s7-2xh200-across/nccl-small.txt). The first version
called dist.destroy_process_group() after the graph and never exited (60 s timeouts): the worker
now leaves with os._exit once it has printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

SOCKETS = {
    "NCCL_P2P_DISABLE": "1",
    "NCCL_SHM_DISABLE": "1",
    "NCCL_IB_DISABLE": "1",
    "NCCL_NET": "Socket",
    "NCCL_SOCKET_IFNAME": "lo",
}
CANDIDATES: list[tuple[str, dict[str, str]]] = [
    ("default", {}),
    ("ll", {"NCCL_PROTO": "LL"}),
    ("1ch", {"NCCL_MIN_NCHANNELS": "1", "NCCL_MAX_NCHANNELS": "1"}),
    ("ll-1ch", {"NCCL_PROTO": "LL", "NCCL_MIN_NCHANNELS": "1", "NCCL_MAX_NCHANNELS": "1"}),
]


def worker() -> None:
    t0 = time.time()
    rank = os.environ["RANK"]

    def say(msg: str) -> None:
        print(f"[r{rank} {time.time() - t0:6.2f}s] {msg}", file=sys.stderr, flush=True)

    import torch
    import torch.distributed as dist

    say("imported torch " + torch.__version__)
    torch.cuda.set_device(0)
    dist.init_process_group("nccl")
    say("init done")
    x = torch.ones(3584, dtype=torch.float16, device="cuda")
    for _ in range(51):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    n = 500
    t = time.perf_counter()
    for _ in range(n):
        dist.all_reduce(x)
        torch.cuda.synchronize()
    eager = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(n):
        dist.all_reduce(x)
    torch.cuda.synchronize()
    eager_nosync = (time.perf_counter() - t) / n * 1e6
    say(f"eager {eager:.1f} us, back to back {eager_nosync:.1f} us")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            dist.all_reduce(x)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(56):
            dist.all_reduce(x)
    g.replay()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        g.replay()
    torch.cuda.synchronize()
    graph = (time.perf_counter() - t) / (20 * 56) * 1e6
    say(f"graph {graph:.1f} us")
    if rank == "0":
        row = {
            "eager_us": round(eager, 1),
            "eager_nosync_us": round(eager_nosync, 1),
            "graph_us": round(graph, 1),
        }
        print(json.dumps(row), flush=True)
    os._exit(0)  # destroy_process_group() after a captured graph never returned (session 7)


def main() -> None:
    for i, (name, extra) in enumerate(CANDIDATES):
        procs = []
        for r in (0, 1):
            env = dict(os.environ, **SOCKETS, **extra, NCCL_DEBUG="WARN")
            env.update(CUDA_VISIBLE_DEVICES=str(r), RANK=str(r), LOCAL_RANK="0", WORLD_SIZE="2")
            env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29800 + i))
            with open(f"/tmp/nd-{name}-{r}.err", "w", encoding="utf-8") as err:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, __file__, "--worker"], env=env, stdout=subprocess.PIPE,
                        stderr=err, text=True,
                    )
                )  # fmt: skip
        try:
            out, _ = procs[0].communicate(timeout=35)
            procs[1].wait(timeout=10)
            print(
                json.dumps({"name": name, "env": extra, **json.loads(out.strip() or "{}")}),
                flush=True,
            )
        except (subprocess.TimeoutExpired, json.JSONDecodeError):
            print(
                json.dumps({"name": name, "env": extra, "error": "no answer in 35 s"}), flush=True
            )
            for p in procs:
                p.kill()


if __name__ == "__main__":
    worker() if "--worker" in sys.argv else main()
