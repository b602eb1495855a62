"""Capture-once, replay-many CUDA graphs keyed by a step's shape: the one owner of that policy.

Both engines are bound by launching kernels from Python at small batch (issue 13). A step whose
shape (key) has been seen runs as one graph replay. The first step of a key runs eagerly (its
result is the step's real result; it also warms every buffer, cuBLAS and NCCL), then the same
callable is captured for that key. Every graph shares one memory pool (only one replays at a time,
and a graph's output is read before the next replay). Every rank sees the same steps in the same
order (rank 0 broadcasts them), so every rank captures and replays in lockstep, collectives
included. A capture that fails turns graphs off on that rank (eager and replayed collectives
interleave correctly, so the group keeps serving) and `describe()` says why, for /health.

The callable must read its inputs from tensors at fixed addresses and must not synchronise with
the host; the engine fills those tensors before calling `run`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from typing import Any

import torch

log = logging.getLogger("tpserve.engines.cudagraphs")


class GraphSet:
    def __init__(self, device: torch.device, off_reason: str | None = None) -> None:
        self.device = device
        self.graphs: dict[Hashable, tuple[torch.cuda.CUDAGraph, Any]] = {}
        self.pool: Any = None  # one memory pool for every graph, made at the first capture
        self.bytes = 0
        self.capture_s = 0.0
        self.replays = 0
        self.off_reason = off_reason

    def run(self, key: Hashable, step: Callable[[], Any]) -> Any:
        """``step()``'s result: replayed when ``key`` was captured, else eager (then captured)."""
        if self.off_reason is not None:
            return step()
        entry = self.graphs.get(key)
        if entry is not None:
            graph, out = entry
            graph.replay()
            self.replays += 1
            return out
        out = step()
        self._capture(key, step)
        return out

    def _capture(self, key: Hashable, step: Callable[[], Any]) -> None:
        t0 = time.monotonic()
        before = 0
        if torch.cuda.is_available():
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()  # as torch.cuda.graph does on entry: the difference is the graph's pool
            before = torch.cuda.memory_reserved(self.device)
        try:
            graph = torch.cuda.CUDAGraph()
            if self.pool is None:
                self.pool = torch.cuda.graph_pool_handle()
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                out = step()  # captured, not run
        except Exception as exc:  # any capture failure: stay eager, keep serving
            self.off_reason = f"capture at {key} failed: {type(exc).__name__}: {exc}"[:400]
            log.error("CUDA graphs off: %s", self.off_reason)
            return
        self.bytes += max(0, torch.cuda.memory_reserved(self.device) - before)
        self.capture_s += time.monotonic() - t0
        self.graphs[key] = (graph, out)

    def describe(self) -> dict[str, Any]:
        return {
            "enabled": self.off_reason is None,
            "off_reason": self.off_reason,
            "keys": sorted(self.graphs, key=str),
            "memory_mib": round(self.bytes / 2**20, 1),
            "capture_s": round(self.capture_s, 2),
            "replays": self.replays,
        }
