"""A CUDA OOM in a step, and a peer that stops answering while idle, without a model (world size 1,
tests/fakes.ScriptedEngine): the scheduler's recovery and /health. The TP=2 run with the real
DeepSpeed engine and the fault on one rank is test_oom_tp2.py.

The fault is tpserve.control.ranks.TestFaultOOM (TPSERVE_TEST_FAULT_OOM in a server): a real
torch.cuda.OutOfMemoryError raised from inside engine.forward.
"""

from __future__ import annotations

import asyncio
import threading
import time

import fakes
import pytest
from test_hostile_scheduler import Running

from tpserve.config import ServeConfig
from tpserve.control.dist import Channel
from tpserve.control.messages import Step
from tpserve.control.ranks import OK, OOM, TestFaultOOM, run
from tpserve.core.request import Event, Request
from tpserve.core.sampling import SamplingParams
from tpserve.core.service import Service
from tpserve.engines.base import DistInfo

LONG = SamplingParams(max_new_tokens=20, ignore_eos=True)
PROMPTS = [[5, 6, 7], [12, 13], [20], [30, 31, 32, 33]]  # token streams that avoid fakes.UNDECODABLE


def test_fault_spec_strikes_the_forwards_it_names_on_its_rank() -> None:
    fault = TestFaultOOM("1:3:2,*:1:1:before", rank=1)
    strikes = [fault._strike(rows) for rows in (1, 2, 3, 1, 1, 1)]
    # arms on the first forward of >= 3 rows, fails it and the next; then the second fault arms at once
    assert strikes == [
        (False, False),
        (False, False),
        (True, False),
        (True, False),
        (True, True),
        (False, False),
    ]
    other = TestFaultOOM("1:3:2", rank=0)
    assert [other._strike(3), other._strike(3), other._strike(3)] == [(False, False)] * 3
    with pytest.raises(ValueError):
        TestFaultOOM("1:3", rank=0)


def test_run_catches_only_a_cuda_oom() -> None:
    engine = fakes.ScriptedEngine()
    fault = TestFaultOOM("0:1:1", rank=0)
    engine.forward = fault.wrap(engine.forward)  # type: ignore[method-assign]
    assert run(engine, Step([1], [[5, 6]])) == (None, OOM)
    logits, outcome = run(engine, Step([2], [[5]]))
    assert outcome == OK and logits is not None
    with pytest.raises(RuntimeError, match="KV capacity"):  # any other error is not caught
        run(fakes.ScriptedEngine(kv_tokens=1), Step([3], [[5, 6]]))


def _generate_all(r: Running, prompts: list[list[int]]) -> list[tuple[list[Event], Request]]:
    """Submit in this order (FIFO: the first is the oldest), wait for every final event."""

    async def main() -> list[tuple[list[Event], Request]]:
        return await asyncio.gather(*(r.generate(p, LONG) for p in prompts))

    return asyncio.run(main())


def _tokens(results: list[tuple[list[Event], Request]]) -> list[list[int]]:
    return [evs[-1].output_ids for evs, _ in results]


@pytest.fixture(scope="module")
def expected() -> list[list[int]]:
    r = Running(fakes.ScriptedEngine(max_batch=4))
    try:
        return _tokens(_generate_all(r, PROMPTS))
    finally:
        r.stop()


def _faulty(spec: str) -> Running:
    engine = fakes.ScriptedEngine(max_batch=4)
    engine.forward = TestFaultOOM(spec, rank=0).wrap(engine.forward)  # type: ignore[method-assign]
    return Running(engine)


def test_one_oom_recomputes_with_half_the_batch_and_every_token_is_right(expected: list[list[int]]) -> None:
    # `after`: the engine's state HAD advanced when the OOM came; the recompute must not double it
    r = _faulty("0:4:1")
    try:
        results = _generate_all(r, PROMPTS)
        assert [evs[-1].finish_reason for evs, _ in results] == ["length"] * 4
        assert _tokens(results) == expected
        text = "".join(e.text for e in results[0][0])  # streamed once each: nothing lost, nothing twice
        assert text == fakes.decode(expected[0])
        assert r.sched.metrics.oom_steps._value.get() == 1
    finally:
        r.stop()
    assert r.crash is None, r.crash
    assert not r.engine.seqs  # everything released (the last ones by the shutdown message)


def test_oom_down_to_one_sequence_fails_the_newest_with_capacity_503(expected: list[list[int]]) -> None:
    # 4 rows OOM -> 2 (recomputed) OOM -> 1 OOM: the newest (4th) ends -> 1 OOM: the 3rd ends
    r = _faulty("0:4:4")
    try:
        results = _generate_all(r, PROMPTS)
        finals = [evs[-1] for evs, _ in results]
        assert [f.finish_reason for f in finals] == ["length", "length", "error", "error"], finals
        assert all(f.error_kind == "capacity" and "out of GPU memory" in (f.error or "") for f in finals[2:])
        assert _tokens(results)[:2] == expected[:2]
        assert r.sched.metrics.oom_steps._value.get() == 4
        again = _generate_all(r, PROMPTS[:1])  # still serving
        assert _tokens(again) == expected[:1]
    finally:
        r.stop()
    assert r.crash is None, r.crash
    assert not r.engine.seqs


def test_symmetric_oom_before_the_forward(expected: list[list[int]]) -> None:
    r = _faulty("*:2:2:before")  # 4 rows -> 2 -> 1: no request fails
    try:
        results = _generate_all(r, PROMPTS)
        assert [evs[-1].finish_reason for evs, _ in results] == ["length"] * 4
        assert _tokens(results) == expected
    finally:
        r.stop()
    assert r.crash is None, r.crash


class _Partitionable(Channel):
    """World size 1, but `agree` can be made to wait, as an all_reduce towards a partitioned peer does."""

    def __init__(self) -> None:
        super().__init__(DistInfo())
        self.cut = threading.Event()

    def agree(self, outcome: int) -> int:
        while self.cut.is_set():
            time.sleep(0.01)
        return outcome


def test_idle_health_turns_503_when_the_heartbeat_is_not_answered() -> None:
    cfg = ServeConfig(
        model_dir="/nonexistent", served_model_name="t", stall_timeout_s=0.9, heartbeat_timeout_s=3
    )
    assert cfg.heartbeat_interval_s == 0.5
    r = Running(fakes.ScriptedEngine())
    channel = _Partitionable()
    r.sched.channel = channel
    service = Service(cfg, 2)
    service.ready(r.sched, "scripted", "test", {}, [])
    try:
        time.sleep(1.2)  # idle: heartbeats answered
        h = service.health()
        assert h["status"] == "ok" and h["heartbeat_age_sec"] < 1.0 and h["stall_reason"] is None
        channel.cut.set()
        t0, seen = time.monotonic(), []
        while time.monotonic() - t0 < 3:
            seen.append((round(time.monotonic() - t0, 2), service.health()))
            time.sleep(0.05)
        channel.cut.clear()
        stalled = [(t, h) for t, h in seen if h["status"] == "stalled"]
        assert stalled, [(t, h["heartbeat_age_sec"]) for t, h in seen]
        # 503 once 2 heartbeat intervals (1 s) passed since the last answer, before the heartbeat's
        # own age (0.5 s less) reaches the stall timeout: the reason says so (0.4 s of slack for a busy VM)
        assert stalled[0][0] <= 1.5, stalled[0]
        heartbeat = [h for _, h in stalled if "have not answered" in h["stall_reason"]]
        # (> 1.0 s decided it; /health rounds to 3 decimals, so 1.0004 s reads 1.0)
        assert heartbeat and all(h["heartbeat_age_sec"] >= 1.0 for h in heartbeat), stalled[:3]
        time.sleep(1.0)
        assert service.health()["status"] == "ok"  # answered again
    finally:
        channel.cut.clear()
        r.stop()
