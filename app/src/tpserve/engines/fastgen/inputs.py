"""Asynchronous scheduling on the device (issue 13): the previous step's picks become this step's input.

tpserve.core.scheduler launches step N+1 before step N's tokens reach rank 0's host. A decoding row
of step N+1 then names "step N's pick of row r"; every rank keeps its own picks on its device (the
argmax of its logits, identical on every rank: the logits are all-gathered), and `StepInputs` writes
them into DeepSpeed's device input ids after DeepSpeed copied the batch there and before the model
runs (a CUDA graph replay reads that same buffer).

DeepSpeed's batch preparation (``RaggedBatchWrapper.finalize``, the attention atoms, the KV block
tables) fills pinned host "shadow" buffers and copies them to the device without waiting. With steps
overlapping, the next ``put()`` would overwrite those host buffers while the previous copies may
still be queued behind the GPU's work: `StepInputs` records an event once a step's copies are queued,
and the engine waits for it before the next ``put()`` (`wait_inputs`). In steady state it has long
completed: the copies run as soon as the step before finishes, and rank 0 waited for that step's
tokens before it planned this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class StepInputs:
    """Stands in for the v2 model's ``forward``: previous picks into the input ids, then the model."""

    def __init__(self, inner: Callable[[Any], torch.Tensor], device: torch.device, max_rows: int) -> None:
        self.inner = inner
        self.picks = torch.zeros(max_rows, dtype=torch.long, device=device)
        #: for the next call: (positions in the batch's input ids, rows of `picks`)
        self.take: tuple[list[int], list[int]] | None = None
        # flat: a [2, n] view of the first 2n entries is contiguous (an asynchronous copy needs that)
        self._index_host = torch.zeros(2 * max_rows, dtype=torch.long).pin_memory()
        self._index = torch.zeros(2 * max_rows, dtype=torch.long, device=device)
        self._queued = torch.cuda.Event()
        self.copies = 0  # steps whose inputs came (partly) from the device

    def wait_inputs(self) -> None:
        """Before DeepSpeed refills its host buffers: the last step's copies from them have run."""
        self._queued.synchronize()

    def __call__(self, batch: Any) -> torch.Tensor:
        if self.take is not None:
            positions, rows = self.take
            self.take = None
            ids = batch.input_ids()
            n = len(rows)
            if positions == rows == list(range(n)):  # the same sequences again, in the same order
                ids[:n].copy_(self.picks[:n])
            else:
                host = self._index_host[: 2 * n]
                host.copy_(torch.tensor(positions + rows))
                index = self._index[: 2 * n].view(2, n)
                index.view(-1).copy_(host, non_blocking=True)
                ids.index_copy_(0, index[0], self.picks.index_select(0, index[1]).to(ids.dtype))
            self.copies += 1
        self._queued.record()
        return self.inner(batch)
