"""What the per-step outcome agreement (Channel.agree) costs, on CPU, 2 processes on one host:

    python bench/agree_cost.py [--steps 3000]

For each control path (the shared-memory mailbox; gloo over loopback TCP, what ranks on separate
hosts use) it times rank 0's loop of a decode-sized Step broadcast with and without the agreement
that follows it (the worker's "forward" is empty, so the numbers are the control plane alone) and
prints microseconds per step. Across hosts the gloo all_reduce costs one network round trip more.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import multiprocessing as mp
import os
import socket
import tempfile
import time

from tpserve.control.dist import Channel
from tpserve.control.mailbox import Mailbox
from tpserve.control.messages import Step
from tpserve.engines.base import DistInfo

STEP = Step(list(range(1, 17)), [[1000 + i] for i in range(16)], [])  # 16 decoding sequences


def _rank(rank: int, port: int, path: str, steps: int, out: mp.Queue) -> None:
    import torch.distributed as tdist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    group = tdist.new_group(backend="gloo", timeout=dt.timedelta(seconds=60))
    info = DistInfo(rank=rank, world_size=2, local_size=2)
    box = Mailbox(path, 2, rank, 1 << 12, create=rank == 0) if rank == 0 else None
    tdist.barrier(group=group)
    if rank != 0:
        box = Mailbox(path, 2, rank, 1 << 12, create=False)
    tdist.barrier(group=group)
    results = {}
    for name, channel in (("mailbox", Channel(info, group, box)), ("gloo", Channel(info, group))):
        for agree in (False, True):
            tdist.barrier(group=group)
            t0 = time.perf_counter()
            for _ in range(steps):
                channel.broadcast(STEP if rank == 0 else None)
                if agree:
                    channel.agree(0)
            results[f"{name} {'broadcast + agree' if agree else 'broadcast only'}"] = round(
                (time.perf_counter() - t0) / steps * 1e6, 1
            )
    if rank == 0:
        out.put(results)
        box.unlink()
    tdist.barrier(group=group)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3000)
    a = p.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    path = os.path.join(tempfile.gettempdir(), f"tpserve-agree-bench-{os.getpid()}")
    procs = [ctx.Process(target=_rank, args=(r, port, path, a.steps, out)) for r in (0, 1)]
    for proc in procs:
        proc.start()
    results = out.get(timeout=600)
    for proc in procs:
        proc.join(60)
    print(json.dumps({"us_per_step": results, "steps": a.steps, "cpus": os.cpu_count()}, indent=1))


if __name__ == "__main__":
    main()
