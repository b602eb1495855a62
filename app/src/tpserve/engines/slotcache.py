"""A static KV cache with one row ("slot") per running sequence, for the autotp engine (issue 13.3).

transformers' StaticCache keeps ONE position for the whole batch; a serving batch is ragged (every
sequence at its own length, sequences join and leave every step). Here every layer's K/V live in
one preallocated tensor ``[slots, kv_heads/TP, max_context + 1, head_dim]`` and each forward is one
of two kinds:

- prefill (eager, one sequence): its new tokens are written at ``[slot, :, start:start+n]`` and the
  attention sees that slot's first ``start+n`` positions (causal mask built here);
- decode (one token for each of the first ``rows`` slots, ONE forward): token ``b`` is written at
  ``[b, :, pos[b]]`` and attends to positions ``<= pos[b]`` of its own row, over the first ``span``
  positions. ``pos`` lives in a device buffer at a fixed address, and the slices are fixed by
  (rows, span), so a decode forward can be captured as a CUDA graph per (rows, span) bucket and
  replayed with new ``pos`` / token values.

Slots that take no part in a decode step write to the scratch column ``max_context`` (never inside
any ``span``), so a decode step never disturbs another sequence's cache. The mask is a boolean 4-D
tensor handed to the model as ``{"full_attention": mask}`` (transformers then builds none), so the
model must use SDPA attention (the engine loads it that way) and full attention only.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache


def buckets(limit: int, start: int = 1) -> list[int]:
    """Powers of two from ``start`` up to ``limit``, and ``limit`` itself (sorted, unique)."""
    out = []
    b = max(1, start)
    while b < limit:
        out.append(b)
        b *= 2
    out.append(limit)
    return out


def bucket_for(n: int, choices: list[int]) -> int:
    """The smallest bucket >= n (choices sorted); ValueError when n is beyond the last one."""
    for b in choices:
        if b >= n:
            return b
    raise ValueError(f"{n} is beyond the largest bucket {choices[-1]}")


class SlotCache(Cache):
    """Per-slot static K/V for every layer; the engine sets the mode before each forward."""

    def __init__(
        self,
        layers: int,
        slots: int,
        kv_heads: int,
        head_dim: int,
        max_context: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        super().__init__(layers=[])
        shape = (slots, kv_heads, max_context + 1, head_dim)  # +1: the scratch column
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(layers)]
        self.slots = slots
        self.max_context = max_context
        self.scratch = max_context
        self.rows_index = torch.arange(slots, device=device)
        #: decode write positions (= RoPE positions) per slot; a fixed address for CUDA graphs
        self.pos = torch.full((slots,), max_context, dtype=torch.long, device=device)
        self._mode: tuple[Any, ...] = ("none",)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    # -- modes (set by the engine before a forward) ------------------------------------------
    def prefill(self, slot: int, start: int, length: int) -> torch.Tensor:
        """Next forward writes ``length`` tokens of ``slot`` from ``start``; returns its 4-D mask."""
        self._mode = ("prefill", slot, start, length)
        device = self.pos.device
        q = torch.arange(start, start + length, device=device)[:, None]
        k = torch.arange(start + length, device=device)[None, :]
        return (k <= q)[None, None]

    def decode(self, rows: int, span: int) -> torch.Tensor:
        """Next forward brings one token for slots [0, rows) at ``pos``; returns its 4-D mask.

        Only tensor operations on fixed buffers: safe inside a CUDA-graph capture."""
        self._mode = ("decode", rows, span)
        k = torch.arange(span, device=self.pos.device)[None, :]
        return (k <= self.pos[:rows, None])[:, None, None, :]

    # -- transformers' Cache interface -------------------------------------------------------
    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        kind = self._mode[0]
        if kind == "prefill":
            _, slot, start, length = self._mode
            keys[slot, :, start : start + length] = key_states[0]
            values[slot, :, start : start + length] = value_states[0]
            end = start + length
            return keys[slot : slot + 1, :, :end], values[slot : slot + 1, :, :end]
        if kind == "decode":
            _, rows, span = self._mode
            at, pos = self.rows_index[:rows], self.pos[:rows]
            keys[at, :, pos] = key_states[:, :, 0]  # [rows, heads, dim]: advanced dims first
            values[at, :, pos] = value_states[:, :, 0]
            return keys[:rows, :, :span], values[:rows, :, :span]
        raise RuntimeError("SlotCache used without prefill()/decode() first")

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0  # positions are always passed explicitly

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.max_context
