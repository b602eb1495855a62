"""Where a served step's GPU time goes, per rank: an opt-in torch.profiler window (issue 13).

``TPSERVE_PROFILE=START:COUNT:DIR`` (diagnostics only, off by default): every rank profiles its own
engine steps START .. START+COUNT-1 (its ``run_step`` calls, counted from 1) and writes
``DIR/stepprofile-rank<R>.json``: host wall time per step, and from the GPU's own timeline the
kernels by kind, busy time (the union of kernel intervals), idle time (the span between the first
kernel's start and the last one's end, less busy) and the longest idle gaps with the kernels on both
sides, which shows what the GPU waited for (a host launch, a copy, a peer's all-reduce). Under
asynchronous scheduling the host's calls and the GPU's work are a step apart: the GPU timeline is
the measure, the host times are context.

Only CUDA activity is traced (CPU-op tracing would slow the very launches being studied). On a
CPU-only rank the window still runs and says so (no kernels). The kernel classification is also
what ``bench/phases.py profile`` reports (one owner: `kernel_table`).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from tpserve.engines.base import EngineError

log = logging.getLogger("tpserve.engines.stepprofile")

PROFILE_ENV = "TPSERVE_PROFILE"

KERNEL_KINDS = (  # first match wins; lower-case substrings of CUDA kernel names
    ("all-reduce (NCCL)", ("nccl",)),  # also the one all-gather of the logits
    ("all-reduce (one-shot)", ("one_shot", "oneshot", "symm", "barrier")),
    # before GEMM: DeepSpeed's flash_fwd_kernel names cutlass types
    ("attention + rotary", ("attn", "flash", "atom", "rotary", "blocked", "kv_")),
    ("GEMM", ("gemm", "gemv", "cutlass", "xmma", "nvjet", "cublas", "splitk", "dot_kernel")),
    ("copy / fill", ("memcpy", "memset", "copy", "fill")),
)

Kernel = tuple[str, float, float]  # name, start us, end us


def kernel_kind(name: str) -> str:
    low = name.lower()
    return next((kind for kind, keys in KERNEL_KINDS if any(k in low for k in keys)), "other")


def kernel_table(events: list[Kernel], steps: int, gaps: int = 0) -> dict[str, Any]:
    """GPU time per step from (kernel name, start us, end us): by kind, busy (union of intervals),
    idle within the span, the top kernels and (``gaps`` > 0) the longest idle gaps. Kernels of one
    stream do not overlap; NCCL's may, so busy <= the sum."""
    by_kind: dict[str, float] = {}
    by_name: dict[str, list[float]] = {}
    spans = sorted(events, key=lambda e: e[1])
    for name, a, b in events:
        kind = kernel_kind(name)
        by_kind[kind] = by_kind.get(kind, 0.0) + (b - a)
        by_name.setdefault(name, []).append(b - a)
    busy, end, last = 0.0, float("-inf"), ""
    holes: list[tuple[float, str, str]] = []  # (idle us, kernel before, kernel after)
    for name, a, b in spans:
        if a > end and end > float("-inf"):
            holes.append((a - end, last, name))
        if b > end:
            busy += b - max(a, end)
            end, last = b, name
    span = (end - spans[0][1]) if spans else 0.0
    top = sorted(by_name.items(), key=lambda kv: -sum(kv[1]))[:12]
    out: dict[str, Any] = {
        "kernels_per_step": round(len(events) / steps, 1),
        "kernel_ms_per_step": round(sum(b - a for _, a, b in events) / steps / 1000, 4),
        "busy_ms_per_step": round(busy / steps / 1000, 4),
        "idle_ms_per_step": round((span - busy) / steps / 1000, 4),
        "by_kind_ms_per_step": {k: round(v / steps / 1000, 4) for k, v in sorted(by_kind.items())},
        "top": [
            {
                "kernel": name[:90],
                "kind": kernel_kind(name),
                "per_step": round(len(d) / steps, 2),
                "ms_per_step": round(sum(d) / steps / 1000, 4),
            }
            for name, d in top
        ],
    }
    if gaps:
        out["idle_gaps_over_10us"] = {
            "per_step": round(sum(1 for h in holes if h[0] > 10) / steps, 2),
            "ms_per_step": round(sum(h[0] for h in holes if h[0] > 10) / steps / 1000, 4),
        }
        out["longest_gaps"] = [
            {"us": round(us, 1), "after": before[:70], "before": after[:70]}
            for us, before, after in sorted(holes, reverse=True)[:gaps]
        ]
    return out


def cuda_kernels(prof: Any) -> list[Kernel]:
    """(name, start us, end us) of every GPU kernel / copy a torch.profiler run saw."""
    out = []
    for e in prof.events():
        on_gpu = str(getattr(e, "device_type", "")).endswith("CUDA")
        if on_gpu and e.time_range.end > e.time_range.start:
            out.append((e.name, float(e.time_range.start), float(e.time_range.end)))
    return out


class StepProfile:
    """The window: `wrap` an engine's ``run_step``; steps START..START+COUNT-1 run under the profiler."""

    def __init__(self, spec: str, rank: int) -> None:
        try:
            start, count, folder = spec.split(":", 2)
            self.start, self.count, self.folder = int(start), int(count), Path(folder)
            if self.start < 1 or self.count < 1 or not folder:
                raise ValueError
        except ValueError:
            raise ValueError(f"{PROFILE_ENV}={spec!r}: want START:COUNT:DIR (START, COUNT >= 1)") from None
        self.rank = rank
        self.calls = 0
        self.host_s: list[float] = []
        self._prof: Any = None
        self._t0 = 0.0
        self.result: dict[str, Any] | None = None

    @classmethod
    def install(cls, engine: Any, rank: int) -> StepProfile | None:
        spec = os.environ.get(PROFILE_ENV, "").strip()
        if not spec:
            return None
        try:
            profile = cls(spec, rank)
        except ValueError as exc:  # a configuration error: every rank stops with it (exit 2)
            raise EngineError(str(exc)) from None
        log.warning("rank %d: %s=%s: profiling steps %d..%d", rank, PROFILE_ENV, spec,
                    profile.start, profile.start + profile.count - 1)  # fmt: skip
        engine.run_step = profile.wrap(engine.run_step)
        return profile

    def wrap(self, run_step: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        @functools.wraps(run_step)
        def profiled(uids: Sequence[int], chunks: Sequence[Sequence[int]], shared: int = 0) -> torch.Tensor:
            self.calls += 1
            if self.calls == self.start:
                self._guarded(self._begin)
            t = time.perf_counter()
            try:
                return run_step(uids, chunks, shared)
            finally:
                if self._prof is not None:
                    self.host_s.append(time.perf_counter() - t)
                    if self.calls == self.start + self.count - 1:
                        self._guarded(self._end)

        return profiled

    def _guarded(self, action: Callable[[], None]) -> None:
        """A diagnostic never breaks serving: a failure (an unwritable DIR, a profiler error) is
        logged and the window is dropped."""
        try:
            action()
        except Exception as exc:
            self._prof = None
            log.error("rank %d: %s failed, no step profile: %s: %s", self.rank, PROFILE_ENV,
                      type(exc).__name__, exc)  # fmt: skip

    def _begin(self) -> None:
        from torch.profiler import ProfilerActivity, profile

        on_cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        self._prof = profile(activities=[ProfilerActivity.CUDA if on_cuda else ProfilerActivity.CPU])
        self._prof.__enter__()
        self._t0 = time.perf_counter()

    def _end(self) -> None:
        on_cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        prof, self._prof = self._prof, None
        try:
            if on_cuda:
                torch.cuda.synchronize()  # the window's last kernels are in the trace
            wall = time.perf_counter() - self._t0
        finally:
            prof.__exit__(None, None, None)
        steps = len(self.host_s)
        self.result = {
            "rank": self.rank,
            "steps": steps,
            "first_step": self.start,
            "wall_ms_per_step": round(wall / steps * 1000, 4),
            "host_run_step_ms_mean": round(sum(self.host_s) / steps * 1000, 4),
            **(kernel_table(cuda_kernels(prof), steps, gaps=15) if on_cuda else {"gpu": "none (CPU rank)"}),
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"stepprofile-rank{self.rank}.json"
        path.write_text(json.dumps(self.result, indent=1))
        brief = {k: self.result.get(k) for k in ("wall_ms_per_step", "busy_ms_per_step", "idle_ms_per_step")}
        log.warning("rank %d: step profile of %d steps in %s: %s", self.rank, steps, path, brief)
