"""CUDA graphs for FastGen's decode steps (issue 13.1).

At batch 1 the v2 model is bound by launching ~15 kernels per layer from Python, not by the GPU
(19.6 ms/token at TP=2 on an H200 whose memory-bandwidth floor is 1.8 ms). A CUDA graph replays the
whole forward with one launch.

Why DeepSpeed's v2 model can be captured as it is:
- ``RaggedBatchWrapper.finalize`` copies each step's metadata (token ids, sequence descriptors, KV
  block pointers, token->sequence map) into device buffers allocated once, at fixed addresses;
- every module writes into a buffer it allocated once (``empty_from`` views of it), so a step with
  the same number of tokens and sequences uses the same addresses, and the attention "atoms" are
  one per sequence when each sequence brings one token;
- the tensor-parallel all-reduce / all-gather are NCCL collectives on the current stream.
One thing is not: DeepSpeed's BLAS wrapper (``BlasLibLinear``) keeps a cuBLAS handle on the legacy
default stream, which no capture may touch. `use_stream_gemm` routes those GEMMs through
``torch.mm`` (cuBLAS as well, on the current stream) in eager and graph mode alike, so the tokens
with and without graphs come from the same arithmetic.

Policy: a step whose every sequence brings exactly one token (decode; also a 1-token prompt) of
batch size ``n`` runs eagerly the first time ``n`` is seen, then the forward is captured for ``n``;
later steps of size ``n`` replay it. Steps with prompt chunks stay eager. Exact sizes, no padding:
up to ``max_batch_sequences`` graphs (64 by default), sharing one memory pool (only one replays at a
time and every output lives in DeepSpeed's own buffers). Every rank sees the same steps in the same
order (rank 0 broadcasts them), so every rank captures and replays in lockstep. A capture that
fails turns graphs off on that rank with a log line and /health says why; eager and replayed
collectives interleave correctly, so the group keeps serving.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from tpserve.engines.cudagraphs import GraphSet


def use_stream_gemm() -> str:
    """DeepSpeed's BLAS linear through torch.mm on the current stream (capturable); what was done."""
    from deepspeed.inference.v2.kernels.core_ops.blas_kernels.blas_linear import BlasLibLinear

    if getattr(BlasLibLinear, "_tpserve_stream_gemm", False):
        return "torch.mm"

    def call(self: Any, output: torch.Tensor, hidden_states: torch.Tensor, weights: torch.Tensor) -> Any:
        torch.mm(
            hidden_states.reshape(-1, hidden_states.shape[-1]),
            weights.t(),
            out=output.view(-1, output.shape[-1]),
        )
        return output

    BlasLibLinear.__call__ = call  # type: ignore[method-assign]
    BlasLibLinear._tpserve_stream_gemm = True  # type: ignore[attr-defined]
    return "torch.mm"


class DecodeGraphs:
    """Stands in for the v2 model's ``forward``: decode steps go through a GraphSet keyed by size."""

    def __init__(self, eager: Callable[[Any], torch.Tensor], device: torch.device) -> None:
        self.eager = eager
        self.set = GraphSet(device)

    @property
    def off_reason(self) -> str | None:
        return self.set.off_reason

    def __call__(self, batch: Any) -> torch.Tensor:
        n = int(batch.current_sequences)
        if int(batch.current_tokens) != n:  # a prompt chunk: eager
            return self.eager(batch)
        return self.set.run(f"batch {n}", lambda: self.eager(batch))

    def describe(self) -> dict[str, Any]:
        info = self.set.describe()
        info["batch_sizes"] = sorted(int(str(k).split()[1]) for k in info.pop("keys"))
        return info
