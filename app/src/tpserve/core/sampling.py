"""Token sampling on rank 0: greedy, temperature, top-k, top-p, per-request seed."""

from __future__ import annotations

import dataclasses

import torch


@dataclasses.dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 → greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 → off
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0 or self.top_k == 1


def make_generator(params: SamplingParams) -> torch.Generator | None:
    """A private RNG per request: a seed gives reproducible samples whatever else is running."""
    if params.greedy:
        return None
    gen = torch.Generator(device="cpu")
    if params.seed is not None:  # the API bounds it to 64 bits; the modulo keeps any int valid here
        gen.manual_seed(int(params.seed) % 2**64)
    else:
        gen.seed()
    return gen


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) everything outside the top-k and outside the top-p nucleus. 1-D logits."""
    out = logits.clone()
    if top_k > 0 and top_k < out.numel():
        kth = torch.topk(out, top_k).values[-1]
        out[out < kth] = float("-inf")
    if 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(out, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        cumulative = torch.cumsum(probs, dim=-1)
        remove = cumulative - probs > top_p  # keep the smallest prefix whose mass reaches top_p
        remove[0] = False
        out[order[remove]] = float("-inf")
    return out


def sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None) -> int:
    """Pick the next token id from 1-D float logits."""
    if params.greedy:
        return int(torch.argmax(logits).item())
    scaled = logits.float() / max(params.temperature, 1e-5)
    filtered = filter_logits(scaled, params.top_k, params.top_p)
    probs = torch.softmax(filtered, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


@dataclasses.dataclass(frozen=True)
class Failed:
    """One row that yields no token (non-finite logits, a sampling error): its request ends alone."""

    reason: str


def sample_batch(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int | Failed]:
    """Next token of every row of [n, vocab] logits, which may live on the GPU (fastgen).

    Every row's argmax and whether all its logits are finite come to the host in one small copy
    (greedy rows need nothing else). Sampled rows are copied to the CPU one by one (their
    generators are CPU generators). A row with NaN/inf logits, or whose sampling raises, becomes
    `Failed` instead of failing the batch.
    """
    if not params:
        return []
    argmax, finite = torch.stack((logits.argmax(dim=-1), torch.isfinite(logits).all(dim=-1).long())).tolist()
    tokens: list[int | Failed] = []
    for i, p in enumerate(params):
        if not finite[i]:
            tokens.append(Failed("the model produced non-finite logits (NaN/inf) for this sequence"))
        elif p.greedy:
            tokens.append(int(argmax[i]))
        else:
            try:
                tokens.append(sample(logits[i].float().cpu(), p, generators[i]))
            except (RuntimeError, ValueError) as exc:  # incl. torch.OutOfMemoryError
                tokens.append(Failed(f"sampling failed ({type(exc).__name__}: {exc})"))
    return tokens
