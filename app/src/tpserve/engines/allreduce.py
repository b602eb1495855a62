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
cross hosts), 16-bit tensors up to ``max_bytes`` (prompt chunks are larger and stay on NCCL). A
dtype the kernel refuses (torch 2.11-2.13's one-shot kernel takes float32 and bfloat16, not float16,
which is what fastgen's activations are) goes through float32: the cast is the copy into the buffer
anyway, and the sum comes back through a cast. With two ranks that is bit-for-bit NCCL's float16 sum
(a + b of two float16 values is exact in float32, then rounded once, as a float16 add rounds it).
At start-up each dtype's route is checked against NCCL on a test tensor; any failure leaves NCCL in
charge of that dtype and /health says why.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("tpserve.engines.allreduce")


class OneShotAllReduce:
    def __init__(self, group: Any, device: torch.device, max_bytes: int = 1 << 20) -> None:
        self.max_bytes = max_bytes
        #: dtype -> the dtype it is summed in (itself, or float32 where the kernel refuses it)
        self.routes: dict[torch.dtype, torch.dtype] = {}
        self.calls = 0
        self.off_reason: str | None = None
        self.refused: list[str] = []
        try:
            import torch.distributed as tdist
            import torch.distributed._symmetric_memory as symm_mem

            self.group = group if group is not None else tdist.group.WORLD
            self.group_name = self.group.group_name
            self.buffer = symm_mem.empty(max_bytes, dtype=torch.uint8, device=device)
            symm_mem.rendezvous(self.buffer, self.group_name)
            self._wide = torch.empty(max_bytes // 4, dtype=torch.float32, device=device)
            self._check(tdist)
        except Exception as exc:  # any failure: NCCL stays in charge
            self.off_reason = f"{type(exc).__name__}: {exc}"[:300]
            log.warning("one-shot all-reduce off: %s", self.off_reason)

    def _check(self, tdist: Any) -> None:
        """Each dtype's route once against NCCL: natively, else through float32 (every rank runs the
        same checks in the same order; torch 2.11's kernel refuses float16 before any communication)."""
        rank = tdist.get_rank(self.group)
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            for via in dict.fromkeys((dtype, torch.float32)):
                if via != dtype and self.routes.get(torch.float32) != torch.float32:
                    continue  # no float32 route to go through
                if self._probe(tdist, rank, dtype, via):
                    break
        self.calls = 0
        self.routes.pop(torch.float32, None)  # what a 16-bit model sends: float32 was the means
        if not self.routes:
            raise RuntimeError("; ".join(self.refused))

    def _probe(self, tdist: Any, rank: int, dtype: torch.dtype, via: torch.dtype) -> bool:
        probe = torch.arange(4096, device=self.buffer.device, dtype=dtype) * 0.001 + rank
        expected = probe.clone()
        tdist.all_reduce(expected, group=self.group)
        self.routes[dtype] = via
        try:
            self(probe)
            if not torch.allclose(probe.float(), expected.float(), rtol=1e-2, atol=1e-2):
                raise RuntimeError("the one-shot sum differs from NCCL's on the probe tensor")
        except (NotImplementedError, RuntimeError) as exc:
            del self.routes[dtype]
            self.refused.append(f"{dtype} via {via}: {type(exc).__name__}: {str(exc)[:120]}")
            return False
        return True

    def __call__(self, tensor: torch.Tensor) -> bool:
        """Sum ``tensor`` over the group in place; False (nothing done) when it is not for us."""
        via = self.routes.get(tensor.dtype)
        n = tensor.numel()
        if (
            self.off_reason is not None
            or via is None
            or n * via.itemsize > self.max_bytes
            or not tensor.is_contiguous()
        ):
            return False
        flat = tensor.view(-1)
        staged = self.buffer.view(via)[:n]
        staged.copy_(flat)  # the cast, where there is one
        if via == tensor.dtype:
            torch.ops.symm_mem.one_shot_all_reduce_out(staged, "sum", self.group_name, flat)
        else:  # the sum may not land in the buffer the peers are reading: a workspace, then back
            wide = self._wide[:n]
            torch.ops.symm_mem.one_shot_all_reduce_out(staged, "sum", self.group_name, wide)
            flat.copy_(wide)
        self.calls += 1
        return True

    def describe(self) -> dict[str, Any]:
        return {
            "enabled": self.off_reason is None,
            "off_reason": self.off_reason,
            "dtypes": [_name(d) if d == v else f"{_name(d)} via {_name(v)}" for d, v in self.routes.items()],
            "refused": self.refused,
            "max_bytes": self.max_bytes,
            "calls": self.calls,
        }


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


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
