"""Float32 rotary frequencies for DeepSpeed v2 (FastGen) attention.

DeepSpeed 0.19.8's rotary kernel (``kv_rotary_embeddings``, blocked_kv_rotary_cuda.cu) synthesises
each inverse frequency theta^(-2i/d) and ROUNDS IT TO FP16 before multiplying it by the token's
position. The angle error therefore grows with the position: ~0.4 rad at position 2000 for the
mid frequencies. transformers keeps the frequencies in float32. Measured on CPU with transformers
alone (the GPU test's model, inv_freq rounded to fp16 vs float32): relative logit error 0.0006 at
7 tokens, 0.01 at 32, 0.77 at 2100 (and a different argmax) -- the "long prompt" bug.

The same CUDA kernel has an entry point that takes float32 frequencies
(``kv_trained_rotary_embeddings``, used by DeepSpeed for models with trained/scaled frequencies).
`use_fp32_rope` swaps the attention module's rotary callable for one that calls it with float32
frequencies computed exactly as transformers does. The kernel launch is the same; only the
frequency source changes (DeepSpeed's Python wrapper for that entry point lists fewer
grouped-query ratios than the kernel dispatches, e.g. not 7 = Qwen2.5-7B's 28/4, hence our own
wrapper).
"""

from __future__ import annotations

from typing import Any

import torch


class Fp32Rotary:
    """Drop-in for DeepSpeed's BlockedRotaryEmbeddings: same call, float32 inverse frequencies."""

    def __init__(self, head_size: int, n_q_heads: int, n_kv_heads: int, inv_freq: torch.Tensor) -> None:
        from deepspeed.ops.op_builder import RaggedOpsBuilder

        self.kernel = RaggedOpsBuilder().load().kv_trained_rotary_embeddings
        self.head_size = head_size
        self.n_q_heads = n_q_heads
        self.n_kv_heads = n_kv_heads
        self.inv_freq = inv_freq.to(dtype=torch.float32).contiguous()

    def __call__(self, kv_cache: torch.Tensor, qkv: torch.Tensor, batch: Any) -> None:
        q_end = self.head_size * self.n_q_heads
        k_end = q_end + self.head_size * self.n_kv_heads
        self.kernel(
            kv_cache,
            qkv[:, :q_end],
            qkv[:, q_end:k_end],
            qkv[:, k_end:],
            self.inv_freq,
            batch.batch_metadata_buffer(),
            batch.inflight_seq_descriptors(),
            batch.tokens_to_seq(),
            batch.kv_ptrs(),
        )


def inverse_frequencies(theta: float, rotary_dim: int) -> torch.Tensor:
    """transformers' default RoPE frequencies, float32: theta^(-2i/d) for i < d/2."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(torch.float32) / rotary_dim
    return 1.0 / (theta**exponents)


def use_fp32_rope(model: Any) -> str:
    """Route the v2 model's rotary embedding through float32 frequencies; returns what was done."""
    from deepspeed.inference.v2.kernels.ragged_ops.linear_blocked_kv_rotary import BlockedRotaryEmbeddings

    attn = getattr(model, "attn", None)
    current = getattr(attn, "_kv_copy", None)
    if isinstance(current, Fp32Rotary):
        return "float32 frequencies"
    if type(current) is not BlockedRotaryEmbeddings:
        return f"DeepSpeed's ({type(current).__name__}: no synthesised rotary to replace)"
    inv_freq = inverse_frequencies(float(current.theta_base), int(current.rotary_dim))
    device = attn._output.device if isinstance(getattr(attn, "_output", None), torch.Tensor) else "cuda"
    attn._kv_copy = Fp32Rotary(current.head_size, current.n_q_heads, current.n_kv_heads, inv_freq.to(device))
    return "float32 frequencies"
