"""The scheduling policy, pure: which sequences run this step and which new tokens each carries.

No threads, no engine, no HTTP: `plan_step` looks at the running requests and a capacity question
(`fits`, the engine's answer) and returns a `StepPlan`; `advance` records what the step sent.
Dynamic SplitFuse: one token per decoding sequence, then prompt chunks within the token budget,
so a long prompt is prefilled over several steps while running streams keep decoding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tpserve.control.messages import from_previous
from tpserve.core.request import Request

#: Prompt tokens a step carries at least, even when decodes fill the token budget.
MIN_PREFILL_CHUNK = 16

Fits = Callable[[list[Request]], bool]


@dataclasses.dataclass
class StepPlan:
    batch: list[Request]
    chunks: list[list[int]]  # chunks[i]: the new tokens of batch[i]
    #: no longer fit the KV cache: the newest running sequences, preempted (their clients retry)
    preempt: list[Request] = dataclasses.field(default_factory=list)
    #: a lone decoding sequence at the end of the cache: it ends with finish_reason "length"
    at_capacity: list[Request] = dataclasses.field(default_factory=list)
    #: a lone prompt that can never fit the cache
    too_big: list[Request] = dataclasses.field(default_factory=list)


def decoding(req: Request) -> bool:
    """Its whole feed is in the engine: its steps carry one token (sampled, or still in flight)."""
    return req.prefilled or req.pending is not None


def new_tokens(req: Request) -> int:
    """Tokens this request adds to the engine in its next step (all its remaining prompt, or 1)."""
    return 1 if decoding(req) else len(req.feed) - req.prefill_pos


def next_token(req: Request) -> list[int]:
    """A decoding request's chunk: its last token, or the in-flight step's pick that will be it."""
    return [from_previous(req.pending[1])] if req.pending is not None else req.output_ids[-1:]


def admission(active: list[Request], req: Request, fits: Fits) -> str:
    """'start' (joins now), 'hold' (waits until running sequences finish) or 'refuse' (never fits)."""
    if fits([*active, req]):
        return "start"
    return "hold" if active else "refuse"


def plan_step(
    active: list[Request], fits: Fits, token_budget: int | None, max_rows: int | None = None
) -> StepPlan:
    """This step's sequences and chunks, after dropping what no longer fits.

    What does not fit: the newest sequence is preempted and the plan is only that (no batch): its
    room is freed with the next message, and only then can `fits` tell whether the others fit, so
    the caller frees it and plans again (one preemption per plan: with three or more sequences a
    middle one is not preempted for room that the newest was about to free).
    max_rows: at most this many sequences, the oldest (after a CUDA OOM the scheduler halves it);
    the others wait, keeping what the engine holds of them."""
    running = list(active)
    plan = StepPlan([], [])
    while running and not fits(running[:max_rows]):
        if len(running) > 1:
            plan.preempt.append(running.pop())
            return plan
        lone = running.pop()
        # a recomputed sequence (it has output) is at the cache's end, not a prompt too big
        (plan.at_capacity if lone.prefilled or lone.output_ids else plan.too_big).append(lone)
    prefilling: list[Request] = []
    for req in running[:max_rows]:
        if decoding(req):
            plan.batch.append(req)
            plan.chunks.append(next_token(req))
        else:
            prefilling.append(req)
    room = None if token_budget is None else max(token_budget - len(plan.batch), MIN_PREFILL_CHUNK)
    for req in prefilling:
        left = len(req.feed) - req.prefill_pos
        take = left if room is None else min(left, room)
        if take <= 0:
            break
        plan.batch.append(req)
        plan.chunks.append(req.feed[req.prefill_pos : req.prefill_pos + take])
        if room is not None:
            room -= take
    return plan


def advance(plan: StepPlan) -> list[int]:
    """Record the prompt tokens the step sent; the rows whose whole prompt is now in the engine
    (they, and every decoding row, get a sampled token)."""
    done = []
    for row, (req, chunk) in enumerate(zip(plan.batch, plan.chunks, strict=True)):
        if not decoding(req):
            req.prefill_pos += len(chunk)
        if req.prefill_pos == len(req.feed):
            done.append(row)
    return done
