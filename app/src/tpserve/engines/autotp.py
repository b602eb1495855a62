"""DeepSpeed v1 AutoTP engine: `deepspeed.init_inference` tensor parallelism over HF transformers.

Works on CPU (gloo / DeepSpeed shm all-reduce) and CUDA (NCCL), within or across hosts.

KV cache (issue 13.3): a static per-slot cache (`tpserve.engines.slotcache`): every running
sequence owns one row of preallocated K/V tensors. A prompt (chunk) runs eagerly against its own
row; all decode tokens of a step run as ONE forward over the first ``rows`` slots, attending over
the first ``span`` positions, with ``rows``/``span`` rounded up to powers of two. On CUDA those
decode forwards are replayed as CUDA graphs per (rows, span) bucket (`tpserve.engines.cudagraphs`),
the TP all-reduces included, which removes the per-kernel launch cost that made autotp slow.
Models with sliding-window layers, and kernel injection (DeepSpeed's own KV cache), keep one HF
DynamicCache per sequence and one forward per sequence (``--no-batch-decode`` forces that path: the
reference the slot path is tested against).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import torch

from tpserve.engines.allreduce import OneShotAllReduce, install
from tpserve.engines.base import (
    Engine,
    EngineError,
    EngineOptions,
    check_sharding,
    load_config,
    resolve_dtype,
)
from tpserve.engines.cudagraphs import GraphSet
from tpserve.engines.slotcache import SlotCache, bucket_for, buckets
from tpserve.tools.memory import ModelShape, default_max_context
from tpserve.tools.memory import plan as memory_plan

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

        # every slot holds the longest request the API lets through (prompt + new tokens), at most
        # the model's context: the cache is allocated up front, so it is sized by what can come
        self._max_seq = default_max_context(self.config, options.max_seq_len)
        if options.max_request_tokens:
            self._max_seq = min(self._max_seq, options.max_request_tokens)
        full_attention = all(
            t == "full_attention" for t in self.config.get("layer_types") or ["full_attention"]
        )
        self._slotted = (
            options.batch_decode
            and not options.kernel_inject
            and full_attention
            and not self.config.get("use_sliding_window", False)
        )
        self._check_memory()

        t0 = time.monotonic()
        model = AutoModelForCausalLM.from_pretrained(
            options.model_dir, dtype=self.dtype, attn_implementation="sdpa"
        )
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
        self._caches: dict[int, Any] = {}  # per-sequence DynamicCache (the path without slots)
        self._lengths: dict[int, int] = {}
        self._vocab = int(self.model.config.vocab_size)
        self._slot_of: dict[int, int] = {}
        self._free_slots = list(range(options.max_batch_size))
        self.cache: SlotCache | None = None
        self.graphs: GraphSet | None = None
        self.allreduce = self._fast_allreduce()
        if self._slotted:
            self._setup_slots()

    def _check_memory(self) -> None:
        """CUDA: the weights, one prompt's workspace and every slot's KV must fit, before loading."""
        if self.options.device != "cuda" or not self._slotted:
            return
        shape = ModelShape.from_config(self.config)
        tp = self.options.tp_size
        total, _ = torch.cuda.mem_get_info(self.device)  # free now: what this rank can have (as fastgen)
        plan = memory_plan(shape, tp, total, self._max_seq, self.options.max_batch_size, self._max_seq)
        need = self.options.max_batch_size * (self._max_seq + 1) * shape.kv_bytes_per_token(tp)
        if need > plan.kv_bytes:
            raise EngineError(
                f"GPU {self.options.dist.local_rank}: the autotp KV cache does not fit: "
                f"{self.options.max_batch_size} slots x {self._max_seq} tokens x "
                f"{shape.kv_bytes_per_token(tp)} B = {need / 2**30:.2f} GiB, but weights/rank "
                f"{plan.weight_bytes / 2**30:.2f} GiB + workspace {plan.workspace_bytes / 2**30:.2f} GiB "
                f"+ overhead {plan.overhead_bytes / 2**30:.2f} GiB leave {max(plan.kv_bytes, 0) / 2**30:.2f} "
                f"GiB of the {total / 2**30:.2f} GiB free; "
                "lower --max-batch-size or --max-prompt-tokens/--max-new-tokens, or use more TP"
            )

    def _fast_allreduce(self) -> dict[str, Any]:
        """CUDA, TP inside one host: small all-reduces one-shot through symmetric memory."""
        o = self.options
        if self.device.type != "cuda" or o.tp_size < 2:
            return {"enabled": False, "off_reason": "CPU or TP=1"}
        if not o.dist.single_host:
            return {"enabled": False, "off_reason": "ranks on several hosts: NCCL"}
        if not o.oneshot_allreduce:
            return {"enabled": False, "off_reason": "turned off (--no-oneshot-allreduce)"}
        group = next((m.mp_group for m in self.model.modules() if getattr(m, "mp_group", None)), None)
        self._oneshot = OneShotAllReduce(group, self.device)
        if self._oneshot.off_reason is None:
            log.info("one-shot all-reduce %s", install("deepspeed.module_inject.layers", self._oneshot))
        return {"how": "symmetric memory, one shot"}

    def _setup_slots(self) -> None:
        cfg = self.model.config
        heads = int(cfg.num_attention_heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
        # this rank's KV heads: what AutoTP left in the first attention layer's k_proj
        attn = next(m for n, m in self.model.named_modules() if n.endswith("self_attn"))
        k_out = attn.k_proj.weight.shape[0]
        slots = self.options.max_batch_size
        self.cache = SlotCache(
            layers=int(cfg.num_hidden_layers),
            slots=slots,
            kv_heads=k_out // head_dim,
            head_dim=head_dim,
            max_context=self._max_seq,
            dtype=self.dtype,
            device=self.device,
        )
        self._rows = buckets(slots)
        self._spans = buckets(self._max_seq, start=min(64, self._max_seq))
        self._ids = torch.zeros((slots, 1), dtype=torch.long, device=self.device)
        if self.device.type != "cuda":
            self.graphs = GraphSet(self.device, off_reason="CPU: no CUDA graphs")
        elif not self.options.cuda_graphs:
            self.graphs = GraphSet(self.device, off_reason="turned off (--no-cuda-graphs)")
        else:
            self.graphs = GraphSet(self.device)

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
        if not uids:
            return torch.empty((0, self._vocab), dtype=torch.float32)
        if self.cache is None:
            return torch.stack([self._forward_one(u, c) for u, c in zip(uids, chunks, strict=True)])
        rows: list[torch.Tensor | None] = [None] * len(uids)
        decode = [
            i for i, (u, c) in enumerate(zip(uids, chunks, strict=True)) if len(c) == 1 and u in self._slot_of
        ]
        if decode:
            logits = self._decode([uids[i] for i in decode], [chunks[i][0] for i in decode])
            for row, i in enumerate(decode):
                rows[i] = logits[row]
        for i, (uid, chunk) in enumerate(zip(uids, chunks, strict=True)):
            if rows[i] is None:
                rows[i] = self._prefill(uid, chunk)
        return torch.stack(rows)  # type: ignore[arg-type]

    def _forward_one(self, uid: int, chunk: Sequence[int]) -> torch.Tensor:
        """One sequence (a prompt or one token) against its own DynamicCache (the path without slots)."""
        ids = torch.tensor([list(chunk)], dtype=torch.long, device=self.device)
        out = self.model(
            input_ids=ids, past_key_values=self._caches.get(uid), use_cache=True, logits_to_keep=1
        )
        self._caches[uid] = out.past_key_values
        self._lengths[uid] = self._lengths.get(uid, 0) + len(chunk)
        return out.logits[0, -1].float()

    def _prefill(self, uid: int, chunk: Sequence[int]) -> torch.Tensor:
        """A prompt (or a chunk of one) of one sequence, eagerly, into its slot."""
        assert self.cache is not None
        slot = self._slot_of.get(uid)
        if slot is None:
            if not self._free_slots:
                raise ValueError(f"no free KV slot for uid {uid} ({self.options.max_batch_size} in use)")
            slot = self._slot_of[uid] = min(self._free_slots)
            self._free_slots.remove(slot)
        start = self._lengths.get(uid, 0)
        mask = self.cache.prefill(slot, start, len(chunk))
        out = self.model(
            input_ids=torch.tensor([list(chunk)], dtype=torch.long, device=self.device),
            attention_mask={"full_attention": mask},
            position_ids=torch.arange(start, start + len(chunk), device=self.device)[None],
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self._lengths[uid] = start + len(chunk)
        return out.logits[0, -1].float()

    def _decode(self, uids: list[int], tokens: list[int]) -> torch.Tensor:
        """One token for each of several sequences in ONE forward over the first `rows` slots
        (a CUDA-graph replay once that (rows, span) bucket has been seen)."""
        assert self.cache is not None and self.graphs is not None
        slots = [self._slot_of[u] for u in uids]
        positions = [self._lengths[u] for u in uids]
        rows = bucket_for(max(slots) + 1, self._rows)
        span = bucket_for(max(positions) + 1, self._spans)
        ids = [0] * rows
        pos = [self.cache.scratch] * rows  # slots without a token this step write to the scratch column
        for slot, tok, p in zip(slots, tokens, positions, strict=True):
            ids[slot], pos[slot] = tok, p
        self._ids[:rows, 0].copy_(torch.tensor(ids, dtype=torch.long))
        self.cache.pos[:rows].copy_(torch.tensor(pos, dtype=torch.long))
        out = self.graphs.run((rows, span), lambda: self._decode_step(rows, span))
        for u in uids:
            self._lengths[u] += 1
        return out[torch.tensor(slots, device=out.device)]

    def _decode_step(self, rows: int, span: int) -> torch.Tensor:
        """The forward a graph captures: inputs only from fixed buffers (token ids, positions)."""
        assert self.cache is not None
        mask = self.cache.decode(rows, span)
        out = self.model(
            input_ids=self._ids[:rows],
            attention_mask={"full_attention": mask},
            position_ids=self.cache.pos[:rows, None],
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1].float()

    def release(self, uid: int) -> None:
        self._caches.pop(uid, None)
        self._lengths.pop(uid, None)
        slot = self._slot_of.pop(uid, None)
        if slot is not None:
            self._free_slots.append(slot)

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
        return len(self._lengths)

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
            "batched_decode": self.cache is not None,
            "kv_cache": (
                {
                    "slots": self.cache.slots,
                    "max_context": self._max_seq,
                    "mib": round(self.cache.nbytes / 2**20, 1),
                }
                if self.cache is not None
                else {"per_sequence": True}
            ),
            "allreduce": self._oneshot.describe() if getattr(self, "_oneshot", None) else self.allreduce,
            "cuda_graphs": self.graphs.describe()
            if self.graphs is not None
            else {"enabled": False, "off_reason": "per-sequence decode (no slot cache)"},
        }


def create_engine(options: EngineOptions) -> Engine:
    return AutoTPEngine(options)
