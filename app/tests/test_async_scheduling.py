"""Asynchronous scheduling (issue 13): a step launched before the previous step's tokens reach the
host gives exactly the tokens of the synchronous loop.

The scheduler plans step N+1 while step N runs; N+1's decoding rows name "step N's pick of row r"
(a negative id) and each rank resolves it from its own kept picks (tpserve.engines.base.run_step).
Compared here with the synchronous loop, request by request (greedy), over the model-free
ScriptedEngine (fast: hypothesis tries many batches with EOS, stop strings, length limits, arrivals
and KV-cache limits) and over the real DeepSpeed AutoTP engine on CPU; the TP=2 launch (every rank
resolving its own picks over gloo) is in test_server.py's async server. FastGen's device-side copy
is tested on the GPU host (tests/gpu/graphs_equal.sh).
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import fakes
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_hostile_scheduler import Running

from tpserve.control.messages import from_previous, previous_row
from tpserve.core.request import Event, Request
from tpserve.core.sampling import SamplingParams
from tpserve.engines.base import previous_rows


def _letters(ids: list[int]) -> str:
    return "".join(chr(ord("a") + i % 26) for i in ids)


def _run(
    engine, items, overlap: bool, token_budget: int | None = None, stagger: bool = False, decode=fakes.decode
):
    """Each request's (output ids, finish reason, error), steps launched ahead, /health's view."""
    r = Running(engine, token_budget=token_budget, overlap=overlap, decode=decode)

    async def main() -> list[tuple[list[Event], Request]]:
        tasks = []
        for prompt, params in items:
            tasks.append(asyncio.ensure_future(r.generate(prompt, params)))
            if stagger:  # arrivals while others decode: the batch changes under the overlap
                await asyncio.sleep(0.003)
        return await asyncio.gather(*tasks)

    try:
        results = asyncio.run(main())
    finally:
        r.stop()
    assert r.crash is None, r.crash
    out = [(req.output_ids, events[-1].finish_reason, events[-1].error) for events, req in results]
    return out, r.sched.steps_ahead, r.sched.describe()


def test_the_wire_form_of_a_previous_pick() -> None:
    assert [previous_row(from_previous(r)) for r in range(5)] == list(range(5))
    assert all(from_previous(r) < 0 for r in range(5))
    assert previous_rows([[5], [from_previous(3)], [1, 2], [from_previous(0)]]) == {1: 3, 3: 0}


PARAMS = st.builds(
    SamplingParams,
    max_new_tokens=st.integers(1, 14),
    temperature=st.sampled_from([0.0, 0.0, 0.7, 1.3]),  # sampled rows: seeded, the same draws either way
    top_k=st.sampled_from([0, 5]),
    top_p=st.sampled_from([1.0, 0.8]),
    seed=st.integers(0, 2**32),
    stop=st.lists(st.sampled_from(["c", "ab", "zz", "q"]), max_size=2).map(tuple),
    ignore_eos=st.booleans(),
)
PROMPTS = st.lists(st.integers(3, fakes.VOCAB - 2), min_size=1, max_size=30)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batch=st.lists(st.tuples(PROMPTS, PARAMS), min_size=1, max_size=10),
    budget=st.sampled_from([None, 8, 24]),
    kv_tokens=st.sampled_from([1 << 16, 40]),
    stagger=st.booleans(),
)
def test_overlapped_steps_give_the_synchronous_tokens(batch, budget, kv_tokens, stagger) -> None:
    sync, ahead0, _ = _run(fakes.ScriptedEngine(8, kv_tokens), batch, False, budget, stagger)
    over, _, info = _run(fakes.ScriptedEngine(8, kv_tokens), batch, True, budget, stagger)
    assert ahead0 == 0
    if not any("preempted" in (error or "") for _, _, error in sync + over):
        assert over == sync
    else:  # which sequence a full KV cache preempts depends on timing: the others must agree
        for o, s in zip(over, sync, strict=True):
            if "preempted" not in f"{o[2]}{s[2]}":
                assert o == s
    assert info["async_scheduling"]["enabled"] is True


def test_decoding_streams_are_launched_ahead_and_nothing_leaks() -> None:
    engine = fakes.ScriptedEngine(8)
    items = [([10 + i, 11], SamplingParams(max_new_tokens=20, ignore_eos=True)) for i in range(6)]
    items.append(([40], SamplingParams(max_new_tokens=20, temperature=0.8, seed=7)))  # sampled on the device
    items.append(([41], SamplingParams(max_new_tokens=20, temperature=1.2, top_k=9, top_p=0.7, seed=8)))
    sync, _, _ = _run(fakes.ScriptedEngine(8), items, False)
    over, ahead, _ = _run(engine, items, True)
    assert over == sync
    assert all(len(ids) == 20 and reason == "length" for ids, reason, _ in over[:6])
    assert ahead > 0, "no step was launched ahead of its tokens"
    assert engine.seqs == {}, f"sequences not released: {engine.seqs}"


def test_a_stop_found_late_costs_one_wasted_row_not_a_token() -> None:
    """EOS (token 0) cannot be predicted: the next step already carries the row; the output must
    not contain anything after the EOS, and the sequence is released."""
    # ScriptedEngine: row token = (first + held) % 64; first=60, prompt of 2 -> 62, 63, 0 (EOS)
    items = [([60, 5], SamplingParams(max_new_tokens=10)), ([20, 21], SamplingParams(max_new_tokens=10))]
    items += [([7], SamplingParams(max_new_tokens=10, ignore_eos=True))]
    engine = fakes.ScriptedEngine(8)
    sync, _, _ = _run(fakes.ScriptedEngine(8), items, False, decode=_letters)
    over, ahead, _ = _run(engine, items, True, decode=_letters)
    assert over == sync and over[0][1] == "stop" and over[0][0][-1] == 0, over
    assert ahead > 0 and engine.seqs == {}


def _autotp(model_dir: Path):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from tpserve.engines import EngineOptions, create

    return create("autotp", EngineOptions(model_dir=str(model_dir), dtype="float32", max_batch_size=8))


def test_real_autotp_overlapped_gives_the_synchronous_tokens(model_dir: Path) -> None:
    """The real DeepSpeed AutoTP engine (in-process, CPU): the same greedy tokens either way, with
    prompts arriving while others decode, chunked prefill and EOS allowed."""
    items = [
        ([5, 6, 7], SamplingParams(max_new_tokens=24, ignore_eos=True)),
        ([100, 200, 300, 400, 500, 600, 700] * 4, SamplingParams(max_new_tokens=16)),
        ([9], SamplingParams(max_new_tokens=30, ignore_eos=True)),
        ([42] * 20, SamplingParams(max_new_tokens=8, stop=("e",))),
        ([77, 78], SamplingParams(max_new_tokens=12, temperature=0.7, seed=3)),
    ]
    engine = _autotp(model_dir)
    sync, _, _ = _run(engine, items, False, token_budget=16, stagger=True)
    over, ahead, info = _run(engine, items, True, token_budget=16, stagger=True)
    assert over == sync
    assert ahead > 0 and info["async_scheduling"]["steps_launched_ahead"] == ahead


@pytest.mark.parametrize("mode", ["on", "auto"])
def test_the_setting_decides_on_every_rank(mode: str) -> None:
    from tpserve.config import ServeConfig
    from tpserve.runtime import overlaps_steps

    cfg = ServeConfig(async_scheduling=mode)
    assert overlaps_steps(cfg, fakes.ScriptedEngine()) is (mode == "on")  # auto: only where steps are async
    assert overlaps_steps(ServeConfig(async_scheduling="off"), fakes.ScriptedEngine()) is False


def test_tp2_sampled_and_greedy_tokens_equal_the_synchronous_twin(
    server, model_dir: Path, tmp_path: Path, auth: dict[str, str]
) -> None:
    """A real TP=2 launch (gloo): the shared server (asynchronous scheduling on) against a twin with
    the same limits and the synchronous loop, one request at a time (so the steps are the same).
    Seeded sampled requests need rank 0's picks on rank 1 (the Step's `shared` broadcast): without
    it rank 1 would feed other tokens than rank 0 and the logits, hence the samples, would differ."""
    import httpx
    from conftest import API_KEY, SHARED_SERVER_ARGS, launched

    bodies = [
        {"prompt": "Tell me a story.", "max_new_tokens": 40, "temperature": 0.9, "seed": 11},
        {"prompt": "1 2 3", "max_new_tokens": 40, "temperature": 1.3, "top_k": 20, "top_p": 0.9, "seed": 5},
        {"prompt": "你好", "max_new_tokens": 40},
    ]

    def answers(base_url: str) -> list[list[int]]:
        out = []
        for body in bodies:
            r = httpx.post(
                base_url + "/generate", json={**body, "ignore_eos": True}, headers=auth, timeout=60
            )
            assert r.status_code == 200, r.text
            out.append(r.json()["output_token_ids"])
        return out

    extra = (*SHARED_SERVER_ARGS, "--async-scheduling", "off")
    with launched(model_dir, tmp_path / "sync.log", api_key=API_KEY, extra=extra) as twin:
        sync = answers(twin.base_url)
    overlapped = answers(server.base_url)
    assert overlapped == sync
    assert all(len(ids) == 40 for ids in sync)
    health = httpx.get(server.base_url + "/health", timeout=10).json()
    assert health["engine_details"]["async_scheduling"]["steps_launched_ahead"] > 0
