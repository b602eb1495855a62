"""GPU memory of one rank, in numbers: weights, workspace, overhead, and what is left for the KV cache.

The one owner of this arithmetic. The fastgen engine uses it at start-up (its default KV cache is
"everything the weights and this headroom leave", and a configuration that cannot hold even one
full-length sequence stops with the numbers instead of loading), and
`python -m tpserve.tools.memory --model-dir DIR --tp N --gpu-gib G` prints the same plan as JSON for
preflights (exit 2 with the reason when it cannot fit).

Estimates are from the model's config.json (16-bit weights unless told otherwise):
  weights/rank   = every transformer linear / TP + norms + the embedding table (replicated)
                   + the LM head / TP (none when tied)
  workspace      = one forward's activations for max_batch_tokens tokens + fp32 logits of
                   max_batch_size rows (three copies: logits, softmax, finiteness check)
  overhead       = CUDA context, cuBLAS/NCCL workspaces, allocator slack (a fixed 1.5 GiB)
  KV per token   = layers x 2 (K, V) x (KV heads / TP) x head_dim x 2 bytes
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from tpserve.config import ServeConfig

GIB = 2**30
OVERHEAD_BYTES = int(1.5 * GIB)


@dataclasses.dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool = False

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ModelShape:
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return cls(
            layers=int(cfg["num_hidden_layers"]),
            hidden=hidden,
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            intermediate=int(cfg["intermediate_size"]),
            vocab=int(cfg["vocab_size"]),
            tied=bool(cfg.get("tie_word_embeddings", False)),
        )

    def weight_bytes(self, tp: int, dtype_bytes: int = 2) -> int:
        """This rank's weights (TP shards the linears and the LM head; the embedding is whole)."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        attn = self.hidden * (q + 2 * kv) + (q + 2 * kv) + q * self.hidden  # qkv (+ bias) and o
        mlp = 3 * self.hidden * self.intermediate
        per_layer = (attn + mlp) / tp + 2 * self.hidden
        head = 0 if self.tied else self.vocab * self.hidden / tp
        return int((self.layers * per_layer + self.vocab * self.hidden + head + self.hidden) * dtype_bytes)

    def kv_bytes_per_token(self, tp: int, dtype_bytes: int = 2) -> int:
        return self.layers * 2 * max(1, self.kv_heads // tp) * self.head_dim * dtype_bytes

    def workspace_bytes(self, tp: int, max_batch_tokens: int, max_batch_size: int) -> int:
        activations = max_batch_tokens * (8 * self.hidden + 3 * self.intermediate // tp) * 2
        logits = max_batch_size * self.vocab * 4 * 3
        return activations + logits


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    gpu_bytes: int
    weight_bytes: int
    workspace_bytes: int
    overhead_bytes: int
    kv_bytes: int
    kv_bytes_per_token: int
    min_kv_tokens: int  # one sequence of the full context must fit
    kv_cache_gb_asked: float = 0.0

    @property
    def headroom_bytes(self) -> int:
        """What must stay free after the KV cache is allocated (DeepSpeed v2's RESERVE size)."""
        return self.workspace_bytes + self.overhead_bytes

    @property
    def kv_tokens(self) -> int:
        return max(0, self.kv_bytes) // self.kv_bytes_per_token

    @property
    def problem(self) -> str | None:
        """Why this does not fit (None: it does), with every number an operator needs."""
        left = self.gpu_bytes - self.weight_bytes - self.headroom_bytes
        sums = (
            f"GPU {gib(self.gpu_bytes)} GiB = weights/rank {gib(self.weight_bytes)} + workspace "
            f"{gib(self.workspace_bytes)} + overhead {gib(self.overhead_bytes)} + KV cache"
        )
        if self.kv_cache_gb_asked and self.kv_cache_gb_asked * GIB > left:
            return (
                f"--kv-cache-gb {self.kv_cache_gb_asked:g} does not fit: {sums}, which leaves "
                f"{gib(left)} GiB for the KV cache; lower it (or leave it unset for the computed default)"
            )
        need = self.min_kv_tokens * self.kv_bytes_per_token
        if self.kv_bytes < need:
            return (
                f"the model does not fit: {sums}, which leaves {gib(max(left, 0))} GiB for the KV cache, "
                f"but one {self.min_kv_tokens}-token sequence needs {gib(need)} GiB; use a larger TP size "
                "(more GPUs per group), a shorter --max-seq-len, or a smaller --max-batch-tokens"
            )
        return None

    def describe(self) -> dict[str, Any]:
        return {
            "gpu_gib": gib(self.gpu_bytes),
            "weights_gib": gib(self.weight_bytes),
            "workspace_gib": gib(self.workspace_bytes),
            "overhead_gib": gib(self.overhead_bytes),
            "headroom_gib": gib(self.headroom_bytes),
            "kv_cache_gib": gib(max(self.kv_bytes, 0)),
            "kv_tokens": self.kv_tokens,
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "fits": self.problem is None,
            "problem": self.problem,
        }


def fastgen_step_tokens(max_batch_size: int) -> int:
    """Tokens in one fastgen forward (its chunked-prefill budget) for a batch size."""
    return max(2048, min(16384, max(1, max_batch_size) * 256))


def default_max_context(cfg: dict[str, Any], max_seq_len: int = 0) -> int:
    """Longest sequence served: --max-seq-len, else the model's positions capped at 8192."""
    return max_seq_len or min(int(cfg.get("max_position_embeddings", 8192)), 8192)


def gib(n: float) -> float:
    return round(n / GIB, 2)


def plan(
    shape: ModelShape,
    tp: int,
    gpu_bytes: int,
    max_batch_tokens: int,
    max_batch_size: int,
    max_context: int,
    kv_cache_gb: float = 0.0,
    dtype_bytes: int = 2,
) -> MemoryPlan:
    """One rank's memory: the KV cache gets `kv_cache_gb` when set, else everything left."""
    weights = shape.weight_bytes(tp, dtype_bytes)
    workspace = shape.workspace_bytes(tp, max_batch_tokens, max_batch_size)
    left = gpu_bytes - weights - workspace - OVERHEAD_BYTES
    kv = min(int(kv_cache_gb * GIB), left) if kv_cache_gb else left
    return MemoryPlan(
        gpu_bytes=gpu_bytes,
        weight_bytes=weights,
        workspace_bytes=workspace,
        overhead_bytes=OVERHEAD_BYTES,
        kv_bytes=kv,
        kv_bytes_per_token=shape.kv_bytes_per_token(tp, dtype_bytes),
        min_kv_tokens=max_context,
        kv_cache_gb_asked=kv_cache_gb,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tpserve.tools.memory", description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True, help="a model directory with config.json")
    ap.add_argument("--tp", type=int, default=1)
    ap.add_argument("--gpu-gib", type=float, required=True, help="memory of one GPU (GiB)")
    ap.add_argument("--kv-cache-gb", type=float, default=0.0)
    ap.add_argument("--max-batch-size", type=int, default=ServeConfig.max_batch_size)
    ap.add_argument("--max-batch-tokens", type=int, default=0, help="0: fastgen's budget for the batch size")
    ap.add_argument("--max-seq-len", type=int, default=0, help="0: the model's, capped at 8192")
    args = ap.parse_args(argv)
    cfg = json.loads((Path(args.model_dir) / "config.json").read_text())
    result = plan(
        ModelShape.from_config(cfg), args.tp, int(args.gpu_gib * GIB),
        args.max_batch_tokens or fastgen_step_tokens(args.max_batch_size), args.max_batch_size,
        default_max_context(cfg, args.max_seq_len), args.kv_cache_gb,
    )  # fmt: skip
    print(json.dumps(result.describe()))
    if result.problem:
        print(f"tpserve.tools.memory: {result.problem}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
