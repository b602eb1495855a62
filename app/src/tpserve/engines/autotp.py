"""DeepSpeed v1 AutoTP engine: `deepspeed.init_inference` tensor parallelism over HF transformers.

Works on CPU (gloo / DeepSpeed shm all-reduce) and CUDA (NCCL), within or across hosts.
Each sequence keeps its own HF KV cache (one DynamicCache per uid), so the ragged step API
is served by running the model once per sequence per step — every rank in the same order.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from tpserve.engines.base import (
    Engine,
    EngineError,
    EngineOptions,
    check_sharding,
    load_config,
    resolve_dtype,
)

log = logging.getLogger("tpserve.engines.autotp")


def linear_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every 2-D weight of a non-embedding module (nn.Linear and DeepSpeed's TP layers)."""
    total = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding) or "Embedding" in type(module).__name__:
            continue
        weight = module._parameters.get("weight")
        if weight is not None and weight.dim() == 2:
            total += weight.numel() * weight.element_size()
    return total


def parameter_bytes(model: torch.nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel() * p.element_size()
    return total


class AutoTPEngine(Engine):
    name = "autotp"

    def __init__(self, options: EngineOptions) -> None:
        import deepspeed
        from deepspeed.module_inject.auto_tp import AutoTP
        from transformers import AutoModelForCausalLM

        self.options = options
        self.dtype = resolve_dtype(options.dtype, options.model_dir, options.device)
        self.config = load_config(options.model_dir)
        if options.device == "cuda":
            torch.cuda.set_device(options.dist.local_rank)
            self.device = torch.device("cuda", options.dist.local_rank)
        else:
            self.device = torch.device("cpu")

        t0 = time.monotonic()
        model = AutoModelForCausalLM.from_pretrained(options.model_dir, dtype=self.dtype)
        model.eval()
        self.full_linear_bytes = linear_weight_bytes(model)
        log.info("loaded %s (%s) in %.1f s", options.model_dir, self.dtype, time.monotonic() - t0)

        inject = False
        if options.kernel_inject:
            if not AutoTP.kernel_supported(AutoTP.get_module_list(model)):
                raise EngineError(
                    f"--kernel-inject asked, but DeepSpeed has no injection policy for model_type "
                    f"{self.config.get('model_type')!r}; run without it (AutoTP shards it)"
                )
            inject = True
        tp_cfg: dict[str, Any] = {"tp_size": options.tp_size}
        if options.tp_grain_size:
            tp_cfg["tp_grain_size"] = options.tp_grain_size
        t0 = time.monotonic()
        ds_engine = deepspeed.init_inference(
            model,
            tensor_parallel=tp_cfg,
            dtype=self.dtype,
            replace_with_kernel_inject=inject,
        )
        self.kernel_inject = inject
        self.model: torch.nn.Module = ds_engine.module
        self.model.to(self.device)
        self.model.eval()
        log.info("init_inference tp_size=%d in %.1f s", options.tp_size, time.monotonic() - t0)

        self._report = self._make_report()
        if options.tp_size > 1:
            problem = check_sharding(self._report["linear_fraction"], options.tp_size)
            if problem:
                raise EngineError(f"rank {options.dist.rank}: {problem}")
        self._caches: dict[int, Any] = {}
        self._lengths: dict[int, int] = {}
        self._vocab = int(self.model.config.vocab_size)
        self._max_seq = options.max_seq_len or int(self.config.get("max_position_embeddings", 2048))
        # decode steps of several sequences run as one padded batch when every layer is plain full
        # attention (no sliding window) and kernel injection (its own KV cache) is off
        full_attention = all(
            t == "full_attention" for t in self.config.get("layer_types") or ["full_attention"]
        )
        self._batch_decode = (
            options.batch_decode
            and not inject
            and full_attention
            and not self.config.get("use_sliding_window", False)
        )

    def _make_report(self) -> dict[str, Any]:
        linear = linear_weight_bytes(self.model)
        return {
            "weight_bytes": parameter_bytes(self.model),
            "linear_weight_bytes": linear,
            "full_linear_weight_bytes": self.full_linear_bytes,
            "linear_fraction": round(linear / self.full_linear_bytes, 4) if self.full_linear_bytes else 0.0,
        }

    # -- Engine interface ------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, uids: Sequence[int], chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        if len(uids) != len(chunks):
            raise ValueError("uids and chunks differ in length")
        for uid, chunk in zip(uids, chunks, strict=True):
            if not chunk:
                raise ValueError(f"empty chunk for uid {uid}")
            length = self._lengths.get(uid, 0) + len(chunk)
            if length > self._max_seq:
                raise ValueError(f"uid {uid} would reach {length} tokens > max_seq_len {self._max_seq}")
        rows: list[torch.Tensor | None] = [None] * len(uids)
        decode = [
            i for i, (u, c) in enumerate(zip(uids, chunks, strict=True)) if len(c) == 1 and u in self._caches
        ]
        if self._batch_decode and len(decode) > 1:
            logits = self._decode_batch([uids[i] for i in decode], [chunks[i][0] for i in decode])
            for row, i in enumerate(decode):
                rows[i] = logits[row]
        for i, (uid, chunk) in enumerate(zip(uids, chunks, strict=True)):
            if rows[i] is None:
                rows[i] = self._forward_one(uid, chunk)
        if not rows:
            return torch.empty((0, self._vocab), dtype=torch.float32)
        return torch.stack(rows)  # type: ignore[arg-type]

    def _forward_one(self, uid: int, chunk: Sequence[int]) -> torch.Tensor:
        """One sequence (a prompt or one token) against its own KV cache."""
        ids = torch.tensor([list(chunk)], dtype=torch.long, device=self.device)
        out = self.model(
            input_ids=ids, past_key_values=self._caches.get(uid), use_cache=True, logits_to_keep=1
        )
        self._caches[uid] = out.past_key_values
        self._lengths[uid] = self._lengths.get(uid, 0) + len(chunk)
        return out.logits[0, -1].float().cpu()

    def _decode_batch(self, uids: list[int], tokens: list[int]) -> torch.Tensor:
        """One token for each of several sequences in ONE forward: their KV caches are left-padded
        into a batch (padding masked out, true positions via position_ids), then split back."""
        from transformers import DynamicCache

        lengths = [self._lengths[u] for u in uids]
        longest = max(lengths)
        per_seq = [list(self._caches[u]) for u in uids]
        layers = []
        for layer in range(len(per_seq[0])):
            keys, values = [], []
            for seq, n in zip(per_seq, lengths, strict=True):
                k, v = seq[layer][0], seq[layer][1]
                pad = (0, 0, longest - n, 0)
                keys.append(torch.nn.functional.pad(k, pad))
                values.append(torch.nn.functional.pad(v, pad))
            layers.append((torch.cat(keys), torch.cat(values)))
        batch = DynamicCache(ddp_cache_data=layers)
        mask = torch.zeros((len(uids), longest + 1), dtype=torch.long, device=self.device)
        for row, n in enumerate(lengths):
            mask[row, longest - n :] = 1
        out = self.model(
            input_ids=torch.tensor([[t] for t in tokens], dtype=torch.long, device=self.device),
            attention_mask=mask,
            position_ids=torch.tensor([[n] for n in lengths], dtype=torch.long, device=self.device),
            past_key_values=batch,
            use_cache=True,
            logits_to_keep=1,
        )
        merged = [(k, v) for k, v, *_ in out.past_key_values]
        for row, (uid, n) in enumerate(zip(uids, lengths, strict=True)):
            start = longest - n
            self._caches[uid] = DynamicCache(
                ddp_cache_data=[
                    (k[row : row + 1, :, start:].clone(), v[row : row + 1, :, start:].clone())
                    for k, v in merged
                ]
            )
            self._lengths[uid] = n + 1
        return out.logits[:, -1].float().cpu()

    def release(self, uid: int) -> None:
        self._caches.pop(uid, None)
        self._lengths.pop(uid, None)

    @property
    def max_batch_size(self) -> int:
        return self.options.max_batch_size

    @property
    def max_seq_len(self) -> int:
        return self._max_seq

    @property
    def vocab_size(self) -> int:
        return self._vocab

    @property
    def active_sequences(self) -> int:
        return len(self._caches)

    def weight_report(self) -> dict[str, Any]:
        return dict(self._report)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "tp_size": self.options.tp_size,
            "kernel_inject": self.kernel_inject,
            "model_type": self.config.get("model_type"),
            "max_seq_len": self._max_seq,
            "max_batch_size": self.options.max_batch_size,
            "batched_decode": self._batch_decode,
        }


def create_engine(options: EngineOptions) -> Engine:
    return AutoTPEngine(options)
