"""The engine interface: a ragged step API that DeepSpeed v1 AutoTP and v2 FastGen both implement.

Every rank holds one engine and calls the same methods with the same arguments in the same order
(the scheduler on rank 0 broadcasts each step). One step:

    logits = engine.forward(uids, chunks)   # chunks[i] = NEW tokens of sequence uids[i]
                                            # (its prompt, or a piece of it, on its first step;
                                            #  one sampled token per decode step)
    -> Tensor[len(uids), vocab]: the logits after the last token of each chunk, float32 on the
       engine's device (on a GPU, sampling.sample_batch picks the tokens there)
    engine.release(uid)                     # the sequence is finished: free its KV cache

FastGen maps this 1:1 onto `engine.put(uids, token_lists)` / `engine.flush(uid)`.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from tpserve.control.messages import previous_row


class EngineError(RuntimeError):
    """A fatal engine problem (bad model, sharding not applied, unsupported setup)."""


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job (from the launcher's environment)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_size: int = 1
    host: str = "localhost"

    @property
    def single_host(self) -> bool:
        return self.local_size == self.world_size


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """Everything an engine needs to load; identical on every rank."""

    model_dir: str
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    tp_size: int = 1
    device: str = "cpu"  # cpu | cuda
    max_batch_size: int = 8
    max_seq_len: int = 0  # 0 = the model's max_position_embeddings (capped: tools.memory.default_max_context)
    max_request_tokens: int = 0  # longest prompt + most new tokens the API lets through (0: unknown)
    kv_cache_gb: float = 0.0  # fastgen: KV cache budget per GPU (0 = engine default)
    kernel_inject: bool = False  # autotp: only honoured where DeepSpeed has a policy
    tp_grain_size: int = 0  # autotp: 0 = DeepSpeed's default (64)
    batch_decode: bool = True  # autotp: slot KV cache, all decode tokens of a step in one forward
    cuda_graphs: bool = True  # fastgen and autotp: decode steps replayed as CUDA graphs
    oneshot_allreduce: bool = True  # CUDA, TP inside one host: small all-reduces via symmetric memory
    dist: DistInfo = dataclasses.field(default_factory=DistInfo)


class Engine(abc.ABC):
    """One rank's share of a tensor-parallel model.

    Asynchronous scheduling (tpserve.core.scheduler, issue 13): with ``keep_picks`` on (every rank
    alike), `run_step` keeps each row's greedy pick on the device, and the next step may name a
    token as "the pick of row r of the previous step" (a negative id, tpserve.control.messages), so
    rank 0 can launch that step before the previous one's tokens reach its host. This generic
    version resolves such ids through the host (correct everywhere, it saves nothing); FastGen
    copies them on the device.
    """

    name: str = "base"
    #: forward() returns while the device still works (CUDA streams): overlapping steps pays
    asynchronous: bool = False
    #: keep each step's greedy picks for the next step (set by tpserve.runtime on every rank)
    keep_picks: bool = False
    _picks: torch.Tensor | None = None
    _last_logits: torch.Tensor | None = None

    @torch.inference_mode()
    def run_step(self, uids: Sequence[int], chunks: Sequence[Sequence[int]], shared: int = 0) -> torch.Tensor:
        """What every rank runs for a Step: `forward`, with ids of the previous step's picks resolved
        (`shared` > 0: its first `shared` picks are rank 0's, received first: it sampled some)."""
        if shared:
            self._share_picks(shared)
        sources = previous_rows(chunks)
        if sources:
            chunks = self._resolve(chunks, sources)
        logits = self.forward(uids, chunks)
        if self.keep_picks:
            self._keep(logits)
        return logits

    def _resolve(self, chunks: Sequence[Sequence[int]], sources: dict[int, int]) -> list[Sequence[int]]:
        """Chunks with the previous step's picks in place (through the host: no device-side copy)."""
        if self._picks is None:
            raise EngineError("a step names the previous step's picks, but none were kept")
        picks = self._picks.tolist()
        out = list(chunks)
        for row, src in sources.items():
            out[row] = [int(picks[src])]
        return out

    def _keep(self, logits: torch.Tensor) -> None:
        self._picks = logits.argmax(dim=-1)
        self._last_logits = logits

    def _picks_buffer(self) -> torch.Tensor:
        if self._picks is None:
            raise EngineError("no picks kept (keep_picks is off, or no step ran)")
        return self._picks

    def _share_picks(self, rows: int) -> None:
        """Every rank: rank 0's picks of the previous step's first `rows` rows replace its own."""
        import torch.distributed as tdist

        if tdist.is_available() and tdist.is_initialized() and tdist.get_world_size() > 1:
            tdist.broadcast(self._picks_buffer()[:rows], src=0)

    @torch.inference_mode()
    def set_picks(self, rows: torch.Tensor, tokens: torch.Tensor) -> None:
        """Rank 0: its sampled tokens of these rows (device tensors) replace the greedy picks."""
        self._picks_buffer().index_copy_(0, rows, tokens)

    @torch.inference_mode()
    def picks_to_host(self, rows: int, ok: tuple[torch.Tensor, torch.Tensor] | None = None) -> Picks:
        """Rank 0: the last step's picks and whether each row is good (all its logits finite; for the
        rows in `ok`, also sampled from a finite distribution) of its first `rows` rows, on their way
        to the host (`Picks.wait`). Synchronous here; FastGen's copy is asynchronous."""
        if self._last_logits is None:
            raise EngineError("no picks kept (keep_picks is off, or no step ran)")
        good = picks_good(self._last_logits, rows, ok)
        return Picks(torch.stack((self._picks_buffer()[:rows], good)).cpu(), None)

    @abc.abstractmethod
    def forward(self, uids: Sequence[int], chunks: Sequence[Sequence[int]]) -> torch.Tensor:
        """Append chunks[i] to sequence uids[i] (new uid = new sequence); last-token logits [n, vocab]."""

    @abc.abstractmethod
    def release(self, uid: int) -> None:
        """Forget sequence uid and free its KV cache (unknown uid: no-op)."""

    def can_schedule(self, uids: Sequence[int], lengths: Sequence[int]) -> bool:
        """Capacity hint: can one step carry these (uid, new-token count) pairs? Default: batch size."""
        return len(uids) <= self.max_batch_size

    @property
    @abc.abstractmethod
    def max_batch_size(self) -> int:
        """Most sequences in one step."""

    @property
    def step_token_budget(self) -> int | None:
        """Tokens one step should carry (the scheduler splits longer prompts); None: no limit."""
        return None

    def kv_blocks(self) -> tuple[int, int] | None:
        """(used, total) blocks of a paged KV cache; None when the engine has none (autotp)."""
        return None

    @property
    @abc.abstractmethod
    def max_seq_len(self) -> int:
        """Longest sequence (prompt + generated) the engine can hold."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Width of the logits returned by forward()."""

    @abc.abstractmethod
    def weight_report(self) -> dict[str, Any]:
        """This rank: weight_bytes, linear_weight_bytes, full_linear_weight_bytes, linear_fraction."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Engine name, dtype, tp size, device and engine-specific facts for /health."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Free resources at shutdown."""


class Picks:
    """One step's greedy picks on their way to the host: ``wait()`` -> (token ids, finite flags)."""

    def __init__(self, host: torch.Tensor, done: Any) -> None:
        self.host, self.done = host, done  # done: a CUDA event recorded after the copy (or None)

    def wait(self) -> tuple[list[int], list[int]]:
        if self.done is not None:
            self.done.synchronize()
        tokens, finite = self.host.tolist()
        return tokens, finite


def picks_good(logits: torch.Tensor, rows: int, ok: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
    """Per row (long, device): 1 when all its logits are finite and, for the rows in `ok` = (row
    indices, sampled-from-a-finite-distribution flags), that sampling was sound."""
    good = torch.isfinite(logits[:rows]).all(dim=-1)
    if ok is not None:
        index, sound = ok
        good = good.index_copy(0, index, good.index_select(0, index) & sound)
    return good.long()


def previous_rows(chunks: Sequence[Sequence[int]]) -> dict[int, int]:
    """{row: the previous step's row whose pick is its token} for chunks that name one."""
    return {i: previous_row(c[0]) for i, c in enumerate(chunks) if len(c) == 1 and c[0] < 0}


# ---------------------------------------------------------------------------------------------
# Helpers shared by engines (pure functions: unit-testable without a model)

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_dtype(name: str, model_dir: str | Path, device: str) -> torch.dtype:
    """'auto' → the checkpoint's dtype on CUDA, float32 on CPU (bf16 matmuls are slow there)."""
    if name != "auto":
        try:
            return DTYPES[name]
        except KeyError:
            raise EngineError(f"unknown dtype {name!r}; use auto or one of {sorted(DTYPES)}") from None
    if device == "cpu":
        return torch.float32
    cfg = load_config(model_dir)
    return DTYPES.get(str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"), torch.bfloat16)


def load_config(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / "config.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise EngineError(f"no config.json in model dir {model_dir}") from None


def full_linear_weight_elements(cfg: dict[str, Any]) -> int:
    """Elements in all Linear weights (attention, MLP, lm_head) of a llama-family decoder.

    Used to check sharding against the unsharded model without loading it. Biases excluded.
    """
    h = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads") or heads)
    hd = int(cfg.get("head_dim") or h // heads)
    inter = int(cfg["intermediate_size"])
    layers = int(cfg["num_hidden_layers"])
    vocab = int(cfg["vocab_size"])
    attn = h * heads * hd + 2 * h * kv * hd + heads * hd * h
    mlp = 3 * h * inter
    return layers * (attn + mlp) + h * vocab


def check_sharding(fraction: float, tp_size: int, tolerance: float = 0.25) -> str | None:
    """None when a rank's linear-weight fraction is ≈ 1/tp, else a message saying what is wrong."""
    expected = 1.0 / tp_size
    if abs(fraction - expected) <= tolerance * expected:
        return None
    return (
        f"tensor parallelism was NOT applied as asked: this rank holds {fraction:.3f} of the linear "
        f"weights, expected ≈ {expected:.3f} for tp_size={tp_size} (no AutoTP/injection policy for this "
        "architecture, or kernel injection without a policy)"
    )
