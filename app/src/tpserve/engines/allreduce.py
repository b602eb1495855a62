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
cross hosts), 16-bit tensors (fp16/bf16) up to ``max_bytes`` (prompt chunks are larger and stay on NCCL). At
start-up the reduce is checked against NCCL on a test tensor; any failure leaves NCCL in charge
and /health says why.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("tpserve.engines.allreduce")


class OneShotAllReduce:
    def __init__(self, group: Any, device: torch.device, max_bytes: int = 1 << 20) -> None:
        self.dtype = dtype = torch.float16  # the buffer's; bfloat16 tensors use it as a view
        self.max_elements = max_bytes // torch.tensor([], dtype=dtype).element_size()
        self.calls = 0
        self.off_reason: str | None = None
        try:
            import torch.distributed as tdist
            import torch.distributed._symmetric_memory as symm_mem

            self.group = group if group is not None else tdist.group.WORLD
            self.group_name = self.group.group_name
            self.buffer = symm_mem.empty(self.max_elements, dtype=dtype, device=device)
            symm_mem.rendezvous(self.buffer, self.group_name)
            self._check(tdist)
        except Exception as exc:  # any failure: NCCL stays in charge
            self.off_reason = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("one-shot all-reduce off: %s", self.off_reason)

    def _check(self, tdist: Any) -> None:
        rank = tdist.get_rank(self.group)
        probe = torch.arange(4096, device=self.buffer.device, dtype=self.dtype) * 0.001 + rank
        expected = probe.clone()
        tdist.all_reduce(expected, group=self.group)
        if not self(probe):
            raise RuntimeError("the probe was refused")
        self.calls = 0
        if not torch.allclose(probe, expected, rtol=1e-3, atol=1e-3):
            raise RuntimeError("one-shot sum differs from NCCL's on the probe tensor")

    def __call__(self, tensor: torch.Tensor) -> bool:
        """Sum ``tensor`` over the group in place; False (nothing done) when it is not for us."""
        n = tensor.numel()
        if (
            self.off_reason is not None
            or tensor.dtype not in (torch.float16, torch.bfloat16)
            or n > self.max_elements
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
            "max_bytes": self.max_elements * torch.tensor([], dtype=self.dtype).element_size(),
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
