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


def make_generator(params: SamplingParams, device: str | torch.device = "cpu") -> torch.Generator | None:
    """A private RNG per request, on the device its logits live on: a seed gives reproducible
    samples whatever else is running."""
    if params.greedy:
        return None
    gen = torch.Generator(device=device)
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


def small_tensor(values: list, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A few host values on `device` without waiting for the device: `torch.tensor(..., device=cuda)`
    copies synchronously (the stream waits: a launched step would have to finish first), so on CUDA
    the values go through pinned memory and an asynchronous copy."""
    host = torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return host
    return host.pin_memory().to(device, non_blocking=True)


def sample_rows_device(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled (non-greedy) rows of [m, vocab] logits in one batched pass on their device, nothing
    read back: (token ids, sampled-from-a-finite-distribution flags), both [m] on the device.

    Temperature, top-k and top-p per row as tensors; then the exponential race: argmax(p / E) with
    E ~ Exp(1) picks token i with probability p_i, and each row draws its E from its own generator
    (one small kernel per row, seeded requests reproducible), so no row's 600 KB of logits is
    copied to the host.
    """
    dev = logits.device
    x = logits.float() / small_tensor([max(p.temperature, 1e-5) for p in params], dev)[:, None]
    vocab = x.shape[-1]
    ks = [p.top_k if 0 < p.top_k < vocab else 0 for p in params]
    if max(ks) > 0:
        top = torch.topk(x, max(ks), dim=-1).values
        kth = top.gather(1, small_tensor([max(k, 1) - 1 for k in ks], dev)[:, None])
        on = small_tensor([k > 0 for k in ks], dev)[:, None]
        x = x.masked_fill(on & (x < kth), float("-inf"))
    ps = [p.top_p if 0.0 < p.top_p < 1.0 else 1.0 for p in params]
    if min(ps) < 1.0:
        ordered, order = torch.sort(x, descending=True, dim=-1)
        probs = torch.softmax(ordered, dim=-1)
        remove = torch.cumsum(probs, dim=-1) - probs > small_tensor(ps, dev)[:, None]
        remove[:, 0] = False  # the smallest prefix whose mass reaches top_p
        x = torch.empty_like(x).scatter_(1, order, ordered.masked_fill(remove, float("-inf")))
    probs = torch.softmax(x, dim=-1)
    race = torch.empty_like(probs)
    for i, gen in enumerate(generators):
        race[i].exponential_(generator=gen)
    return (probs / race).argmax(dim=-1), torch.isfinite(probs).all(dim=-1)


def sample_rows(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int]:
    """`sample_rows_device`, read back: the token ids; ValueError when a row has no distribution."""
    picked, ok = torch.stack(sample_rows_device(logits, params, generators)).tolist()
    if not all(ok):  # e.g. logits of 1e38 over a tiny temperature: no distribution to sample from
        raise ValueError("non-finite probabilities after temperature scaling")
    return [int(t) for t in picked]


def sample_batch(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int | Failed]:
    """Next token of every row of [n, vocab] logits, which may live on the GPU (fastgen).

    Every row's argmax and whether all its logits are finite come to the host in one small copy
    (greedy rows need nothing else). The sampled rows are sampled together on the logits' device
    (`sample_rows`); if that raises, each is retried alone so that only the row that fails ends. A
    row with NaN/inf logits, or whose sampling raises, becomes `Failed` instead of failing the batch.
    """
    if not params:
        return []
    argmax, finite = torch.stack((logits.argmax(dim=-1), torch.isfinite(logits).all(dim=-1).long())).tolist()
    bad = Failed("the model produced non-finite logits (NaN/inf) for this sequence")
    tokens: list[int | Failed] = [int(argmax[i]) if finite[i] else bad for i in range(len(params))]
    rows = [i for i, p in enumerate(params) if finite[i] and not p.greedy]
    if not rows:
        return tokens
    try:
        index = torch.tensor(rows, device=logits.device)
        picked = sample_rows(logits[index], [params[i] for i in rows], [generators[i] for i in rows])
        for i, token in zip(rows, picked, strict=True):
            tokens[i] = token
    except (RuntimeError, ValueError):  # incl. torch.OutOfMemoryError: find the row that fails
        for i in rows:
            try:
                tokens[i] = sample_rows(logits[i : i + 1], [params[i]], [generators[i]])[0]
            except (RuntimeError, ValueError) as exc:
                tokens[i] = Failed(f"sampling failed ({type(exc).__name__}: {exc})")
    return tokens
