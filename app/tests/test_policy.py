"""The pure scheduling policy (tpserve.core.policy): no model, no threads, microseconds per case."""

from __future__ import annotations

import asyncio

import pytest

from tpserve.core import policy
from tpserve.core.request import Request
from tpserve.core.sampling import SamplingParams

LOOP = asyncio.new_event_loop()


def req(prompt: int, decoding: bool = False) -> Request:
    r = Request(list(range(100, 100 + prompt)), SamplingParams(), 30.0, LOOP)
    if decoding:
        r.prefill_pos, r.prefilled, r.output_ids = prompt, True, [7]
    return r


def room(limit: int):  # a KV cache of `limit` tokens per sequence
    return lambda batch: all(r.prefill_pos + len(r.output_ids) + policy.new_tokens(r) <= limit for r in batch)


def test_decodes_first_then_prompt_chunks_within_the_budget() -> None:
    a, b, c = req(5, decoding=True), req(5, decoding=True), req(100)
    plan = policy.plan_step([a, b, c], lambda _: True, token_budget=24)
    assert plan.batch == [a, b, c] and plan.chunks[:2] == [[7], [7]]
    assert len(plan.chunks[2]) == 22  # 24 - 2 decodes
    assert policy.advance(plan) == [0, 1] and c.prefill_pos == 22  # c has no token yet


def test_a_prompt_chunk_moves_even_when_decodes_fill_the_budget() -> None:
    decoding = [req(3, decoding=True) for _ in range(30)]
    long = req(200)
    plan = policy.plan_step([*decoding, long], lambda _: True, token_budget=24)
    assert len(plan.chunks[-1]) == policy.MIN_PREFILL_CHUNK


def test_no_budget_sends_whole_prompts() -> None:
    plan = policy.plan_step([req(300), req(4)], lambda _: True, token_budget=None)
    assert [len(c) for c in plan.chunks] == [300, 4]
    assert policy.advance(plan) == [0, 1]


def test_what_no_longer_fits_is_preempted_newest_first() -> None:
    old, mid, new = req(5, decoding=True), req(5, decoding=True), req(5, decoding=True)
    fits = lambda batch: len(batch) <= 1  # noqa: E731
    plan = policy.plan_step([old, mid, new], fits, None)
    # one at a time: the newest's room is freed before the caller plans again (a middle one is not
    # preempted for room the newest held)
    assert plan.preempt == [new] and plan.batch == []
    plan = policy.plan_step([old, mid], fits, None)
    assert plan.preempt == [mid] and plan.batch == []
    plan = policy.plan_step([old], fits, None)
    assert plan.preempt == [] and plan.batch == [old]


@pytest.mark.parametrize(("decoding", "field"), [(True, "at_capacity"), (False, "too_big")])
def test_a_lone_sequence_that_cannot_fit(decoding: bool, field: str) -> None:
    lone = req(50, decoding=decoding)
    plan = policy.plan_step([lone], room(10), None)
    assert getattr(plan, field) == [lone] and plan.batch == []


def test_admission() -> None:
    running = [req(5, decoding=True)]
    assert policy.admission(running, req(3), room(100)) == "start"
    assert policy.admission(running, req(300), room(100)) == "hold"
    assert policy.admission([], req(300), room(100)) == "refuse"
