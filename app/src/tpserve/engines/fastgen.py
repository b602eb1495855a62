"""FastGen engine: DeepSpeed inference v2 (ragged batching, paged KV cache), CUDA only.

One process per GPU; every rank of the TP group calls ``put`` with the same batch (the rank
protocol broadcasts the step). TP lives inside one node (DeepSpeed raises otherwise).

Facts this module relies on (docs/… and /work/shared/notes/deepspeed.md):
- ``build_hf_engine`` reads an HF safetensors checkpoint; ``put(uids, tokens)`` runs one forward
  over a ragged batch and returns the last-token logits of each sequence; ``flush(uid)`` frees it.
- In 0.19.8 ``put(do_checks=True)`` breaks; we check capacity ourselves (``query``) and call
  ``put(..., do_checks=False)``, as DeepSpeed-MII does.
- By default the KV cache takes nearly all GPU memory: the size is a setting here.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

#: Model types DeepSpeed 0.19.8's ``build_hf_engine`` has policies for.
FASTGEN_MODEL_TYPES = frozenset(
    {"opt", "llama", "mistral", "mixtral", "falcon", "phi", "phi3", "qwen", "qwen2", "qwen2_moe"}
)
#: Compute capabilities deepspeed-kernels ships binaries for (8.0 and newer).
MIN_COMPUTE_CAPABILITY = (8, 0)


@dataclass
class FastGenSettings:
    """Knobs of the v2 engine (all per rank)."""

    model_dir: str
    tp_size: int = 1
    #: KV cache size in blocks (ALLOCATE mode). None: RESERVE mode, leave ``kv_reserve_bytes`` free.
    kv_cache_blocks: int | None = None
    #: GPU memory left free after the KV cache is allocated (RESERVE mode).
    kv_reserve_bytes: int = 8 * 2**30
    #: Tokens in one forward (prefill chunks + decode tokens): the chunked-prefill budget.
    max_batch_tokens: int = 2048
    #: Sequences in one forward.
    max_batch_sequences: int = 256
    #: Sequences the engine tracks at once (running requests).
    max_tracked_sequences: int = 512
    #: Longest sequence (prompt + output) in tokens.
    max_context: int = 8192
    extra: dict[str, Any] = field(default_factory=dict)


def fastgen_unavailable_reason(model_type: str, tp_size: int) -> str | None:
    """Why FastGen cannot serve this model here (None: it can). Cheap: no engine is built."""
    if not torch.cuda.is_available():
        return "no CUDA device (FastGen is CUDA-only)"
    cc = torch.cuda.get_device_capability(0)
    if cc < MIN_COMPUTE_CAPABILITY:
        return f"GPU compute capability {cc[0]}.{cc[1]} < 8.0 (FastGen kernels need Ampere or newer)"
    if model_type not in FASTGEN_MODEL_TYPES:
        return f"model_type {model_type!r} has no DeepSpeed v2 policy ({sorted(FASTGEN_MODEL_TYPES)})"
    local_size = int(os.environ.get("LOCAL_SIZE", os.environ.get("LOCAL_WORLD_SIZE", tp_size)))
    world = int(os.environ.get("WORLD_SIZE", tp_size))
    if world != local_size:
        return f"FastGen TP is within one node only (WORLD_SIZE={world}, LOCAL_SIZE={local_size})"
    if tp_size > torch.cuda.device_count():
        return f"tp_size {tp_size} > {torch.cuda.device_count()} GPUs on this node"
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


class FastGenEngine:
    """Ragged step engine over ``deepspeed.inference.v2``.

    ``put(uids, token_lists)`` appends tokens to each sequence (a new uid starts a sequence) and
    returns the next-token logits of each, on the GPU, shape ``[len(uids), vocab]``. Batches over
    ``max_batch_tokens`` are split into several forwards (chunked prefill) transparently.
    """

    name = "fastgen"

    def __init__(self, settings: FastGenSettings) -> None:
        reason = _preflight(settings)
        if reason:
            raise RuntimeError(f"fastgen engine cannot run: {reason}")
        _ensure_dist_env()
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", _arch_list())
        from deepspeed.inference.v2 import RaggedInferenceEngineConfig, build_hf_engine

        self.settings = settings
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(self.local_rank)
        if settings.kv_cache_blocks:
            memory = {"mode": "allocate", "size": settings.kv_cache_blocks}
        else:
            memory = {"mode": "reserve", "size": settings.kv_reserve_bytes}
        config = RaggedInferenceEngineConfig(
            tensor_parallel={"tp_size": settings.tp_size},
            state_manager={
                "max_tracked_sequences": settings.max_tracked_sequences,
                "max_ragged_batch_size": settings.max_batch_tokens,
                "max_ragged_sequence_count": settings.max_batch_sequences,
                "max_context": settings.max_context,
                "memory_config": memory,
            },
            **settings.extra,
        )
        self._engine = build_hf_engine(settings.model_dir, config)
        self.device = torch.device("cuda", self.local_rank)

    # -- capacity -------------------------------------------------------------------------
    @property
    def free_kv_blocks(self) -> int:
        return int(self._engine.free_blocks[0])

    def can_add(self, uid: int, n_tokens: int, reserved_blocks: int = 0) -> tuple[bool, int]:
        """Whether ``n_tokens`` more tokens of ``uid`` fit in the KV cache; and the blocks they take."""
        free = self.free_kv_blocks - reserved_blocks
        if free < 0:
            return False, 0
        fit_tokens, blocks = self._engine.query(uid, n_tokens, free)
        return fit_tokens == n_tokens, int(blocks)

    # -- steps ----------------------------------------------------------------------------
    def put(self, uids: Sequence[int], token_lists: Sequence[Sequence[int] | torch.Tensor]) -> torch.Tensor:
        tokens = [_as_tensor(t) for t in token_lists]
        if len(uids) != len(tokens) or any(t.numel() == 0 for t in tokens):
            raise ValueError("put needs one non-empty token list per uid")
        budget = self.settings.max_batch_tokens
        max_seqs = self.settings.max_batch_sequences
        if sum(t.numel() for t in tokens) <= budget and len(uids) <= max_seqs:
            return self._forward(list(uids), tokens)
        # Chunked prefill: forwards of at most `budget` tokens; keep each sequence's last logits.
        out: list[torch.Tensor | None] = [None] * len(uids)
        offsets = [0] * len(uids)
        while any(offsets[i] < tokens[i].numel() for i in range(len(uids))):
            batch_idx: list[int] = []
            chunks: list[torch.Tensor] = []
            room = budget
            for i, t in enumerate(tokens):
                left = t.numel() - offsets[i]
                if left <= 0 or room <= 0 or len(batch_idx) >= max_seqs:
                    continue
                take = min(left, room)
                chunks.append(t[offsets[i] : offsets[i] + take])
                batch_idx.append(i)
                offsets[i] += take
                room -= take
            logits = self._forward([uids[i] for i in batch_idx], chunks)
            for row, i in enumerate(batch_idx):
                if offsets[i] == tokens[i].numel():
                    out[i] = logits[row]
        return torch.stack([o for o in out if o is not None])

    def _forward(self, uids: list[int], tokens: list[torch.Tensor]) -> torch.Tensor:
        free = self.free_kv_blocks
        for uid, t in zip(uids, tokens, strict=True):
            fit, blocks = self._engine.query(uid, t.numel(), free)
            if fit != t.numel():
                raise MemoryError(f"KV cache full: uid {uid} needs {t.numel()} tokens, {fit} fit")
            free -= int(blocks)
        return self._engine.put(uids, tokens, do_checks=False)

    def flush(self, uid: int) -> None:
        self._engine.flush(uid)

    def greedy(self, logits: torch.Tensor) -> list[int]:
        """Argmax on the GPU; only the token ids cross to the host."""
        return logits.argmax(dim=-1).tolist()


def _as_tensor(tokens: Sequence[int] | torch.Tensor) -> torch.Tensor:
    if isinstance(tokens, torch.Tensor):
        return tokens.to(dtype=torch.long, device="cpu").reshape(-1)
    return torch.tensor(list(tokens), dtype=torch.long)


def _arch_list() -> str:
    # DeepSpeed's builder crashes on "9.0a" (int('0a')): give it plain major.minor.
    major, minor = torch.cuda.get_device_capability(0)
    return f"{major}.{minor}"


def _preflight(settings: FastGenSettings) -> str | None:
    import json

    cfg_path = os.path.join(settings.model_dir, "config.json")
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            model_type = json.load(fh).get("model_type", "")
    except OSError as exc:
        return f"cannot read {cfg_path}: {exc}"
    return fastgen_unavailable_reason(model_type, settings.tp_size)
