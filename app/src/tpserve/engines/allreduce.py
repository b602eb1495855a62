"""Small tensor-parallel all-reduces inside one node through symmetric memory (issue 13.1), for
both engines: fastgen's v2 model calls ``deepspeed.comm.all_reduce``, autotp's row-parallel layers
``deepspeed.comm.inference_all_reduce``; `install` points that module's ``dist`` at a stand-in that
sends small tensors one-shot and everything else to DeepSpeed as before.

At batch 1 a TP=2 decode step of the 7B shape does 56 all-reduces of 7 KB each (two per layer); NCCL
spends ~15-20 us on each, a one-shot all-reduce over NVLink peer memory a few. PyTorch's symmetric
memory gives every rank a buffer that its peers can read (``torch.distributed._symmetric_memory``):
a rank copies its tensor into its buffer and ``symm_mem.one_shot_all_reduce_out`` sums every rank's
buffer into the output, with its own barrier, on the current stream (so it is captured by the decode
CUDA graphs like NCCL is). NVLink multicast stays off (``TORCH_SYMM_MEM_DISABLE_MULTICAST=1``): the
one-shot algorithm does not need it.

Only where it can work: CUDA, TP > 1, every rank of the group on this host (peer memory does not
cross hosts), 16-bit tensors up to ``max_bytes`` of the dtypes the kernel takes here (checked at
start: torch 2.11's one-shot kernel refused float16, which is what fastgen's activations are; autotp
serves bfloat16 models in bfloat16) (prompt chunks are larger and stay on NCCL). At
start-up the reduce is checked against NCCL on a test tensor; any failure leaves NCCL in charge
and /health says why.

Float16 through float32 (cast into the buffer, one-shot float32 sum into a workspace, cast back) was
built and measured in session 11 (2x H200, TP=2, 7B shape, one sitting): tokens equal to NCCL's, but
slower: the decode step's GPU busy time 3.47 ms at batch 1 (NCCL 3.27) and 5.27 at 64 (NCCL 4.89);
the one-shot kernel alone took 7.1 us per all-reduce at batch 1 (NCCL ~7.0) before its two casts.
So fastgen's float16 all-reduces stay on NCCL (tests/gpu/results/2026-11-30-s11-2xh200/NOTE.md).
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("tpserve.engines.allreduce")


class OneShotAllReduce:
    def __init__(self, group: Any, device: torch.device, max_bytes: int = 1 << 20) -> None:
        self.max_bytes = max_bytes
        self.dtypes: list[torch.dtype] = []  # what the one-shot kernel takes here (checked, below)
        self.calls = 0
        self.off_reason: str | None = None
        try:
            import torch.distributed as tdist
            import torch.distributed._symmetric_memory as symm_mem

            self.group = group if group is not None else tdist.group.WORLD
            self.group_name = self.group.group_name
            self.buffer = symm_mem.empty(max_bytes, dtype=torch.uint8, device=device)
            symm_mem.rendezvous(self.buffer, self.group_name)
            self._check(tdist)
        except Exception as exc:  # any failure: NCCL stays in charge
            self.off_reason = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("one-shot all-reduce off: %s", self.off_reason)

    def _check(self, tdist: Any) -> None:
        """Each 16-bit dtype once against NCCL (every rank runs the same checks in the same order;
        torch 2.11's kernel refuses float16 before any communication, for instance)."""
        rank = tdist.get_rank(self.group)
        refused = []
        for dtype in (torch.bfloat16, torch.float16):
            probe = torch.arange(4096, device=self.buffer.device, dtype=dtype) * 0.001 + rank
            expected = probe.clone()
            tdist.all_reduce(expected, group=self.group)
            self.dtypes.append(dtype)
            try:
                self(probe)
                if not torch.allclose(probe.float(), expected.float(), rtol=1e-2, atol=1e-2):
                    raise RuntimeError("the one-shot sum differs from NCCL's on the probe tensor")
            except (NotImplementedError, RuntimeError) as exc:
                self.dtypes.remove(dtype)
                refused.append(f"{dtype}: {type(exc).__name__}: {str(exc)[:120]}")
        self.calls = 0
        if not self.dtypes:
            raise RuntimeError("; ".join(refused))
        self.refused = refused

    def __call__(self, tensor: torch.Tensor) -> bool:
        """Sum ``tensor`` over the group in place; False (nothing done) when it is not for us."""
        n = tensor.numel()
        if (
            self.off_reason is not None
            or tensor.dtype not in self.dtypes
            or n * tensor.element_size() > self.max_bytes
            or not tensor.is_contiguous()
        ):
            return False
        flat = tensor.view(-1)
        staged = self.buffer.view(tensor.dtype)[:n]
        staged.copy_(flat)
        torch.ops.symm_mem.one_shot_all_reduce_out(staged, "sum", self.group_name, flat)
        self.calls += 1
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "enabled": self.off_reason is None,
            "off_reason": self.off_reason,
            "dtypes": [str(d).removeprefix("torch.") for d in self.dtypes],
            "refused": getattr(self, "refused", []),
            "max_bytes": self.max_bytes,
            "calls": self.calls,
        }


class _Comm:
    """Stands in for ``deepspeed.comm`` inside one module: small all-reduces go one-shot."""

    def __init__(self, base: Any, fast: OneShotAllReduce) -> None:
        self._base = base
        self._fast = fast

    def all_reduce(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not args and set(kwargs) <= {"group"} and self._fast(tensor):
            return None
        return self._base.all_reduce(tensor, *args, **kwargs)

    def inference_all_reduce(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not args and set(kwargs) <= {"group"} and self._fast(tensor):
            return tensor
        return self._base.inference_all_reduce(tensor, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)


def install(module_name: str, fast: OneShotAllReduce) -> str:
    """Route ``dist.all_reduce`` / ``dist.inference_all_reduce`` of that module through ``fast``."""
    import sys

    module = sys.modules[module_name]
    base = getattr(module, "dist", None)
    if base is None or not hasattr(base, "all_reduce"):
        return f"not installed: {module.__name__} has no deepspeed.comm `dist`"
    if not isinstance(base, _Comm):
        module.dist = _Comm(base, fast)  # type: ignore[attr-defined]
    return f"installed in {module.__name__}"
