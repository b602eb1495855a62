"""FastGen engine: DeepSpeed inference v2 (ragged batching, paged KV cache), CUDA only.

One process per GPU; every rank of the TP group calls ``put`` with the same batch (the rank
protocol broadcasts the step). TP runs within a node or across nodes, as long as each node's ranks
use their local GPUs (DeepSpeed's TP group only needs local_rank < tp_size; measured: two emulated
single-GPU nodes over NCCL sockets, tests/gpu/across_nodes.sh).

Facts this module relies on (docs/… and /work/shared/notes/deepspeed.md):
- ``build_hf_engine`` reads an HF safetensors checkpoint; ``put(uids, tokens)`` runs one forward
  over a ragged batch and returns the last-token logits of each sequence; ``flush(uid)`` frees it.
- In 0.19.8 ``put(do_checks=True)`` breaks; we check capacity ourselves (``query``) and call
  ``put(..., do_checks=False)``, as DeepSpeed-MII does.
- By default the KV cache takes nearly all GPU memory: the size is a setting here.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from tpserve.engines import support
from tpserve.engines.allreduce import OneShotAllReduce, install
from tpserve.engines.base import (
    Engine,
    EngineError,
    EngineOptions,
    Picks,
    check_sharding,
    full_linear_weight_elements,
    load_config,
    picks_good,
)
from tpserve.engines.fastgen.graphs import DecodeGraphs, use_stream_gemm
from tpserve.engines.fastgen.inputs import StepInputs
from tpserve.engines.fastgen.rope import use_fp32_rope
from tpserve.tools.memory import ModelShape, default_max_context, fastgen_step_tokens
from tpserve.tools.memory import plan as memory_plan
from tpserve.tools.prebuild import cuda_arch, plain_arch

log = logging.getLogger("tpserve.engines.fastgen")


@dataclass
class FastGenSettings:
    """Knobs of the v2 engine (all per rank)."""

    model_dir: str
    tp_size: int = 1
    #: KV cache size in blocks (ALLOCATE mode); or in GiB per GPU (converted to blocks).
    #: Neither: RESERVE mode, leave ``kv_reserve_bytes`` free (DeepSpeed's default takes ~all memory).
    kv_cache_blocks: int | None = None
    kv_cache_gb: float = 0.0
    #: GPU memory left free after the KV cache is allocated (RESERVE mode); 0: computed by
    #: tpserve.tools.memory (workspace of one step + CUDA overhead), what an A10 with a 7B model needs.
    kv_reserve_bytes: int = 0
    #: Tokens in one forward (prefill chunks + decode tokens): the chunked-prefill budget.
    max_batch_tokens: int = 2048
    #: Sequences in one forward.
    max_batch_sequences: int = 256
    #: Sequences the engine tracks at once (running requests).
    max_tracked_sequences: int = 512
    #: Longest sequence (prompt + output) in tokens.
    max_context: int = 8192
    #: Replay decode steps as CUDA graphs, one per batch size (tpserve.engines.fastgen.graphs).
    cuda_graphs: bool = True
    #: Small all-reduces one-shot through symmetric memory when every rank is on this host
    #: (tpserve.engines.allreduce); NCCL for the rest and across hosts.
    oneshot_allreduce: bool = True
    single_host: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


def fastgen_unavailable_reason(model_type: str, tp_size: int) -> str | None:
    """Why FastGen cannot serve this model here (None: it can). Cheap: no engine is built."""
    if not torch.cuda.is_available():
        return "no CUDA device (FastGen is CUDA-only)"
    static = support.blocker(
        "fastgen", {"model_type": model_type}, "cuda", torch.cuda.get_device_capability(0)
    )
    if static:
        return static
    # Across hosts works when each host's ranks use their local GPUs (DeepSpeed's TP group only
    # needs local_rank < tp_size): one single-GPU node = local rank 0 on every host.
    local_size = int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", tp_size)))
    if local_size > torch.cuda.device_count():
        return f"{local_size} ranks on this host but {torch.cuda.device_count()} GPU(s)"
    try:
        import deepspeed.inference.v2  # noqa: F401
    except Exception as exc:  # an import error of any kind means "cannot run here"
        return f"deepspeed.inference.v2 does not import: {exc}"
    return None


def _ensure_dist_env() -> None:
    """A single process without a launcher still needs torch.distributed's env contract."""
    if "RANK" in os.environ:
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for key, value in {
        "RANK": "0",
        "LOCAL_RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }.items():
        os.environ.setdefault(key, value)


class FastGenEngine(Engine):
    """Ragged step engine over ``deepspeed.inference.v2`` (the tpserve Engine interface).

    ``forward(uids, chunks)`` appends tokens to each sequence (a new uid starts a sequence) and
    returns the next-token logits of each, ON THE GPU, shape ``[len(uids), vocab]`` (the scheduler
    samples there: only token ids cross to the host). A step over ``max_batch_tokens`` is split
    into several forwards (chunked prefill) transparently.
    """

    name = "fastgen"
    asynchronous = True  # put() launches the step and returns: steps can overlap (run_step)

    def __init__(self, settings: FastGenSettings) -> None:
        reason = _preflight(settings)
        if reason:
            raise EngineError(f"fastgen engine cannot run: {reason}")
        _ensure_dist_env()
        # DeepSpeed's op builder crashes on arch suffixes ("9.0a": int('0a') -> ValueError, which the
        # v2 modules then report as "Config ... is not supported"). Images may preset such a value:
        # build the JIT ops for this GPU's plain major.minor.
        os.environ["TORCH_CUDA_ARCH_LIST"] = plain_arch(cuda_arch())  # as the prebuild computed it
        from deepspeed.inference.v2 import RaggedInferenceEngineConfig, build_hf_engine

        self.settings = settings
        self.config = load_config(settings.model_dir)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(self.local_rank)
        self.device = torch.device("cuda", self.local_rank)
        self.kv_blocks_asked = settings.kv_cache_blocks or (
            kv_blocks_for(self.config, settings.tp_size, settings.kv_cache_gb)
            if settings.kv_cache_gb
            else None
        )
        free_bytes, _ = torch.cuda.mem_get_info(self.device)
        self.memory = memory_plan(
            ModelShape.from_config(self.config),
            settings.tp_size,
            free_bytes,
            settings.max_batch_tokens,
            settings.max_batch_sequences,
            settings.max_context,
            settings.kv_cache_gb,
        )
        if self.memory.problem:  # before 15 GB are loaded, and with the numbers
            raise EngineError(f"GPU {self.local_rank}: {self.memory.problem}")
        if self.kv_blocks_asked:
            memory = {"mode": "allocate", "size": self.kv_blocks_asked}
        else:  # the KV cache takes what the weights leave, less the computed headroom
            memory = {"mode": "reserve", "size": settings.kv_reserve_bytes or self.memory.headroom_bytes}
        # DeepSpeed sizes the attention-atom buffer by max_ragged_sequence_count, but a sequence
        # needs one atom per q-block of its chunk: a 2009-token chunk = 16 atoms. Too few atoms
        # silently corrupt attention (seen: rel. logit error 0.45 on a 2100-token prompt with 4
        # sequences). Worst case per forward: n sequences + max_batch_tokens / q_block atoms.
        from deepspeed.inference.v2.kernels.ragged_ops.blocked_flash.blocked_flash import (
            get_kv_block_size,
            get_q_block_size,
        )

        head_dim = int(self.config.get("head_dim") or 0) or int(self.config["hidden_size"]) // int(
            self.config["num_attention_heads"]
        )
        self.q_block = get_q_block_size(head_dim)
        self.kv_block_size = get_kv_block_size(head_dim)
        self.max_atoms = min(
            settings.max_batch_tokens,
            settings.max_batch_sequences + -(-settings.max_batch_tokens // self.q_block),
        )
        engine_config = RaggedInferenceEngineConfig(
            tensor_parallel={"tp_size": settings.tp_size},
            state_manager={
                "max_tracked_sequences": max(settings.max_tracked_sequences, self.max_atoms),
                "max_ragged_batch_size": settings.max_batch_tokens,
                "max_ragged_sequence_count": self.max_atoms,
                "max_context": settings.max_context,
                "memory_config": memory,
            },
            **settings.extra,
        )
        t0 = time.monotonic()
        full_linear = full_linear_weight_elements(self.config)
        self._engine = build_hf_engine(settings.model_dir, engine_config)
        # DeepSpeed's rotary kernel rounds its frequencies to fp16: long prompts drift (see fastgen_rope)
        self.rope = use_fp32_rope(self._v2_model())
        self.gemm = use_stream_gemm()  # eager and graphs alike: the same arithmetic either way
        self.allreduce = self._fast_allreduce()
        self.graphs: DecodeGraphs | None = None
        model = self._v2_model()
        if settings.cuda_graphs:
            self.graphs = DecodeGraphs(model.forward, self.device)
        rows = max(settings.max_batch_sequences, self.max_atoms)
        self.inputs = StepInputs(self.graphs or model.forward, self.device, rows)
        model.forward = self.inputs  # engine.put() calls model.forward(batch)
        self._sources: dict[int, int] = {}  # this step's rows whose token is a previous pick
        # flat, so that a [2, n] view is contiguous: the asynchronous copy to the host needs that
        self._picks_host = [torch.zeros(2 * rows, dtype=torch.long).pin_memory() for _ in range(2)]
        self._picks_stage = torch.zeros(2 * rows, dtype=torch.long, device=self.device)
        self._picks_turn = 0
        self.kv_blocks_total = self.free_kv_blocks
        self.load_s = round(time.monotonic() - t0, 1)
        self._lengths: dict[int, int] = {}
        self._report = self._make_report(full_linear)
        log.info(
            "fastgen tp=%d ready in %.1f s; KV cache %d blocks; %s",
            settings.tp_size,
            self.load_s,
            self.kv_blocks_total,
            self._report,
        )
        if settings.tp_size > 1 and self._report["weight_bytes"] > 0:
            problem = check_sharding(self._report["linear_fraction"], settings.tp_size)
            if problem:
                raise EngineError(problem)

    def _fast_allreduce(self) -> dict[str, Any]:
        """One-shot all-reduce for small tensors where it can work (before any graph is captured)."""
        s = self.settings
        if s.tp_size < 2:
            return {"enabled": False, "off_reason": "TP=1: no all-reduce"}
        if not s.single_host:
            return {"enabled": False, "off_reason": "ranks on several hosts: NCCL"}
        if not s.oneshot_allreduce:
            return {"enabled": False, "off_reason": "turned off (--no-oneshot-allreduce)"}
        model = self._v2_model()
        self._oneshot = OneShotAllReduce(getattr(model, "_base_mp_group", None), self.device)
        if self._oneshot.off_reason is None:
            log.info("one-shot all-reduce %s", install(type(model).__module__, self._oneshot))
        return {"how": "symmetric memory, one shot"}

    def _make_report(self, full_linear_elements: int) -> dict[str, Any]:
        """This rank's weight bytes; linear share = all weights minus the (replicated) embedding table.

        Norms and biases are counted as linear: they are < 0.1% of a 7B model's bytes.
        """
        total = sum(p.numel() * p.element_size() for p in _v2_parameters(self._v2_model()))
        elem = 2  # v2 holds 16-bit weights
        embedding = int(self.config["vocab_size"]) * int(self.config["hidden_size"]) * elem
        if self.config.get("tie_word_embeddings"):
            embedding = 0  # one table serves both; it is sharded as the unembedding
        linear = total - embedding
        full = full_linear_elements * elem
        return {
            "weight_bytes": total,
            "linear_weight_bytes": linear,
            "full_linear_weight_bytes": full,
            "linear_fraction": round(linear / full, 4) if full else 0.0,
        }

    def _v2_model(self) -> Any:
        model = self._engine.model  # a plain method in DeepSpeed 0.19.8, not a property
        return model() if callable(model) else model

    # -- capacity -------------------------------------------------------------------------
    @property
    def free_kv_blocks(self) -> int:
        return int(self._engine.free_blocks[0])

    def can_schedule(self, uids: Sequence[int], lengths: Sequence[int]) -> bool:
        """Whether one step with these (uid, new tokens) fits: sequences, KV blocks, context."""
        if len(uids) > self.settings.max_batch_sequences:
            return False
        new = sum(1 for u in uids if u not in self._lengths)
        if len(self._lengths) + new > self.settings.max_tracked_sequences:
            return False
        need = 0
        for uid, n in zip(uids, lengths, strict=True):
            if self._lengths.get(uid, 0) + n > self.settings.max_context:
                return False
            need += self.new_blocks(uid, n)
        return need <= self.free_kv_blocks

    def new_blocks(self, uid: int, n: int) -> int:
        """KV blocks that `n` more tokens of `uid` allocate: the dense-attention rule of DeepSpeed's
        ``get_kv_requirements`` (ceil(tokens / block) blocks per sequence), as arithmetic. The
        engine's own ``query`` is Python per sequence and ran twice per sequence per step; the GPU
        test checks that both agree."""
        have = self._lengths.get(uid, 0)
        return -(-(have + n) // self.kv_block_size) - -(-have // self.kv_block_size)

    # -- steps ----------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, uids: Sequence[int], chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        tokens = _as_tensors(chunks)
        if len(uids) != len(tokens) or any(t.numel() == 0 for t in tokens):
            raise ValueError("forward needs one non-empty chunk per uid")
        for uid, t in zip(uids, tokens, strict=True):
            length = self._lengths.get(uid, 0) + t.numel()
            if length > self.settings.max_context:
                raise ValueError(
                    f"uid {uid} would reach {length} tokens > max_context {self.settings.max_context}"
                )
        budget = self.settings.max_batch_tokens
        max_seqs = self.settings.max_batch_sequences
        try:
            if sum(t.numel() for t in tokens) <= budget and len(uids) <= max_seqs:
                return self._put(list(uids), tokens, list(range(len(uids))))
            return self._chunked(list(uids), tokens, budget, max_seqs)
        finally:  # also after a failed step (a CUDA OOM): nothing of it leaks into the next
            self._sources = {}
            self.inputs.take = None

    def _chunked(
        self, uids: list[int], tokens: list[torch.Tensor], budget: int, max_seqs: int
    ) -> torch.Tensor:
        """Forwards of at most `budget` tokens / `max_seqs` sequences; keep each sequence's last logits."""
        out: list[torch.Tensor | None] = [None] * len(uids)
        offsets = [0] * len(uids)
        while any(offsets[i] < tokens[i].numel() for i in range(len(uids))):
            batch_idx: list[int] = []
            pieces: list[torch.Tensor] = []
            room = budget
            for i, t in enumerate(tokens):
                left = t.numel() - offsets[i]
                if left <= 0 or room <= 0 or len(batch_idx) >= max_seqs:
                    continue
                take = min(left, room)
                pieces.append(t[offsets[i] : offsets[i] + take])
                batch_idx.append(i)
                offsets[i] += take
                room -= take
            logits = self._put([uids[i] for i in batch_idx], pieces, batch_idx)
            for row, i in enumerate(batch_idx):
                if offsets[i] == tokens[i].numel():
                    out[i] = logits[row].clone()  # put() reuses its output buffer on the next call
        return torch.stack([o for o in out if o is not None])

    def _put(self, uids: list[int], tokens: list[torch.Tensor], rows: list[int]) -> torch.Tensor:
        """One engine.put(); `rows`: each uid's row in the step (for the rows whose token is a pick)."""
        atoms = sum(-(-t.numel() // self.q_block) for t in tokens)
        if atoms > self.max_atoms:  # cannot happen with the sizing in __init__; never run it wrong
            raise EngineError(f"step needs {atoms} attention atoms > {self.max_atoms} allocated")
        need = sum(self.new_blocks(uid, t.numel()) for uid, t in zip(uids, tokens, strict=True))
        free = self.free_kv_blocks
        if need > free:
            raise EngineError(
                f"KV cache full: this step needs {need} more blocks, {free} are free; "
                "raise --kv-cache-gb or lower --max-batch-size"
            )
        for uid in uids:  # DeepSpeed tracks a new uid from here on, even if its forward fails: so must
            self._lengths.setdefault(uid, 0)  # release(), or a request failed after a CUDA OOM leaks it
        if self._sources:
            positions, picks, at = [], [], 0
            for t, row in zip(tokens, rows, strict=True):
                if row in self._sources:
                    positions.append(at)
                    picks.append(self._sources[row])
                at += t.numel()
            self.inputs.take = (positions, picks) if picks else None
        self.inputs.wait_inputs()  # the last step's copies from DeepSpeed's host buffers have run
        logits = self._engine.put(uids, tokens, do_checks=False)
        for uid, t in zip(uids, tokens, strict=True):
            self._lengths[uid] = self._lengths.get(uid, 0) + t.numel()
        return logits

    # -- asynchronous scheduling: picks stay on the device (tpserve.engines.fastgen.inputs) -----
    def _resolve(self, chunks: Sequence[Sequence[int]], sources: dict[int, int]) -> list[Sequence[int]]:
        """A placeholder in each row whose token is a previous pick; StepInputs copies the pick in."""
        self._sources = sources
        out = list(chunks)
        for row in sources:
            out[row] = [0]
        return out

    def _keep(self, logits: torch.Tensor) -> None:
        torch.argmax(logits, dim=-1, out=self.inputs.picks[: logits.shape[0]])
        self._last_logits = logits

    def _picks_buffer(self) -> torch.Tensor:
        return self.inputs.picks

    @torch.inference_mode()
    def picks_to_host(self, rows: int, ok: tuple[torch.Tensor, torch.Tensor] | None = None) -> Picks:
        """The last step's picks and good-row flags, copied to a pinned buffer without waiting (two
        buffers in turn: the scheduler reads one step's while the next step's copy is queued)."""
        if self._last_logits is None:
            raise EngineError("no picks kept (keep_picks is off, or no step ran)")
        stage = self._picks_stage[: 2 * rows].view(2, rows)
        stage[0].copy_(self.inputs.picks[:rows])
        stage[1].copy_(picks_good(self._last_logits, rows, ok))
        host = self._picks_host[self._picks_turn][: 2 * rows].view(2, rows)
        self._picks_turn ^= 1
        host.copy_(stage, non_blocking=True)
        done = torch.cuda.Event()
        done.record()
        return Picks(host, done)

    def release(self, uid: int) -> None:
        if self._lengths.pop(uid, None) is not None:
            self._engine.flush(uid)

    def kv_blocks(self) -> tuple[int, int] | None:
        return self.kv_blocks_total - self.free_kv_blocks, self.kv_blocks_total

    @property
    def max_batch_size(self) -> int:
        return self.settings.max_batch_sequences

    @property
    def step_token_budget(self) -> int | None:
        return self.settings.max_batch_tokens

    @property
    def max_seq_len(self) -> int:
        return self.settings.max_context

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    def weight_report(self) -> dict[str, Any]:
        return dict(self._report)

    def describe(self) -> dict[str, Any]:
        return {
            "engine": self.name,
            "dtype": "float16 (DeepSpeed v2 activations)",
            "device": str(self.device),
            "tp_size": self.settings.tp_size,
            "model_type": self.config.get("model_type"),
            "max_seq_len": self.settings.max_context,
            "max_batch_size": self.settings.max_batch_sequences,
            "max_batch_tokens": self.settings.max_batch_tokens,
            "kv_cache_blocks": self.kv_blocks_total,
            "kv_cache_free_blocks": self.free_kv_blocks,
            "memory_plan": self.memory.describe(),
            "rope": self.rope,
            "gemm": self.gemm,
            "allreduce": self._oneshot.describe() if getattr(self, "_oneshot", None) else self.allreduce,
            "async_scheduling": {"steps_fed_on_device": self.inputs.copies},
            "cuda_graphs": self.graphs.describe()
            if self.graphs
            else {"enabled": False, "off_reason": "turned off (--no-cuda-graphs)"},
            "load_s": self.load_s,
        }


def settings_from_options(options: EngineOptions) -> FastGenSettings:
    cfg = load_config(options.model_dir)
    max_ctx = default_max_context(cfg, options.max_seq_len)
    seqs = max(1, options.max_batch_size)
    return FastGenSettings(
        model_dir=options.model_dir,
        tp_size=options.tp_size,
        kv_cache_gb=options.kv_cache_gb,
        max_batch_tokens=fastgen_step_tokens(seqs),
        max_batch_sequences=seqs,
        max_tracked_sequences=max(seqs, 2 * seqs),
        max_context=max_ctx,
        cuda_graphs=options.cuda_graphs,
        oneshot_allreduce=options.oneshot_allreduce,
        single_host=options.dist.single_host,
    )


def create_engine(options: EngineOptions) -> Engine:
    if options.dtype not in ("auto", "float16", "fp16", "bfloat16", "bf16"):
        raise EngineError(f"fastgen runs 16-bit only (DeepSpeed v2); --dtype {options.dtype} is not possible")
    return FastGenEngine(settings_from_options(options))


def kv_blocks_for(config: dict[str, Any], tp_size: int, gib: float) -> int:
    """KV blocks that fit in `gib` GiB per GPU (fp16 K+V, this rank's share of the KV heads)."""
    from deepspeed.inference.v2.kernels.ragged_ops.blocked_flash.blocked_flash import get_kv_block_size

    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or int(config["hidden_size"]) // heads)
    kv_heads = max(1, int(config.get("num_key_value_heads") or heads) // tp_size)
    per_block = get_kv_block_size(head_dim) * int(config["num_hidden_layers"]) * 2 * kv_heads * head_dim * 2
    return max(1, int(gib * 2**30) // per_block)


def _v2_parameters(model: Any) -> list[torch.Tensor]:
    """The v2 model's weights: its flattened parameter buffer, else the containers' tensors."""
    flat = getattr(model, "flattened_params", None)
    if isinstance(flat, torch.Tensor):
        return [flat]
    out: list[torch.Tensor] = []
    containers = [*(getattr(model, "_transformer", None) or []), getattr(model, "_non_transformer", None)]
    for container in containers:
        for value in vars(container).values() if container is not None else ():
            if isinstance(value, torch.Tensor) and value.is_cuda:
                out.append(value)
    return out


def _as_tensors(chunks: Sequence[Sequence[int] | torch.Tensor]) -> list[torch.Tensor]:
    """One host tensor per chunk; lists of ints (the scheduler's) become ONE tensor split into views
    (64 separate torch.tensor calls per decode step cost ~0.2 ms of rank 0's launch thread)."""
    if any(isinstance(c, torch.Tensor) for c in chunks):
        return [_as_tensor(c) for c in chunks]
    flat = torch.tensor([t for c in chunks for t in c], dtype=torch.long)
    return list(flat.split([len(c) for c in chunks]))


def _as_tensor(tokens: Sequence[int] | torch.Tensor) -> torch.Tensor:
    if isinstance(tokens, torch.Tensor):
        return tokens.to(dtype=torch.long, device="cpu").reshape(-1)
    return torch.tensor(list(tokens), dtype=torch.long)


def _preflight(settings: FastGenSettings) -> str | None:
    import json

    cfg_path = os.path.join(settings.model_dir, "config.json")
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            model_type = json.load(fh).get("model_type", "")
    except OSError as exc:
        return f"cannot read {cfg_path}: {exc}"
    return fastgen_unavailable_reason(model_type, settings.tp_size)
