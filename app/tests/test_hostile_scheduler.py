"""One request never takes the engine thread down: the scheduler against hostile requests and a
misbehaving model, without a model (tests/fakes.ScriptedEngine) — fast, so hypothesis can try many.

Every request must end with exactly one final event; a request whose step goes wrong (NaN/inf
logits, a seed outside 64 bits, a token the detokenizer refuses, a sequence that outgrows the KV
cache) ends alone with a reason, and every other request in the same steps finishes normally.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import fakes
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tpserve.control.dist import Channel
from tpserve.control.ranks import Watchdog
from tpserve.core.metrics import Metrics
from tpserve.core.request import Event, Request
from tpserve.core.sampling import SamplingParams
from tpserve.core.scheduler import Scheduler
from tpserve.engines.base import DistInfo, Engine


class Running:
    """A real Scheduler thread (world size 1: the broadcast is a loopback) over a ScriptedEngine."""

    def __init__(
        self,
        engine: Engine,
        token_budget: int | None = None,
        decode=fakes.decode,
        overlap: bool = False,
    ) -> None:
        self.engine = engine
        channel, batch = Channel(DistInfo()), engine.max_batch_size
        engine.keep_picks = overlap  # asynchronous scheduling (tpserve.runtime sets it on every rank)
        self.sched = Scheduler(
            engine, channel, decode, {0}, Metrics(), batch, 0.5, Watchdog(0), token_budget,
            overlap=overlap,
        )  # fmt: skip
        self.crash: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.sched.run()
        except BaseException as exc:  # the test reports whatever killed the thread
            self.crash = exc

    def stop(self) -> None:
        self.sched.request_shutdown()
        self.thread.join(10)

    async def generate(self, prompt: list[int], params: SamplingParams) -> tuple[list[Event], Request]:
        req = Request(prompt, params, 30.0, asyncio.get_running_loop())
        self.sched.submit(req)
        events = []
        while not events or not events[-1].final:
            events.append(await asyncio.wait_for(req.events.get(), 10))
        return events, req

    def run_one(self, prompt: list[int], params: SamplingParams) -> tuple[list[Event], Request]:
        return asyncio.run(self.generate(prompt, params))

    def run_many(self, items: list[tuple[list[int], SamplingParams]]) -> list[tuple[list[Event], Request]]:
        """Submitted in this order (the first is the oldest), all at once."""

        async def main() -> list[tuple[list[Event], Request]]:
            return await asyncio.gather(*(self.generate(p, sp) for p, sp in items))

        return asyncio.run(main())


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def running(request: pytest.FixtureRequest) -> Iterator[Running]:
    """Both loops: synchronous, and asynchronous scheduling (steps launched before the tokens)."""
    r = Running(fakes.ScriptedEngine(max_batch=8), overlap=request.param)
    yield r
    r.stop()
    assert r.crash is None, f"the engine thread died: {r.crash!r}"


NORMAL = SamplingParams(max_new_tokens=6, temperature=0.0)


def _ok(events: list[Event]) -> bool:
    return events[-1].finish_reason in ("stop", "length") and events[-1].error is None


def test_seed_beyond_64_bits_nan_logits_and_a_bad_token_end_alone(running: Running) -> None:
    async def main() -> list[tuple[list[Event], Request]]:
        return await asyncio.gather(
            running.generate([10, 11], NORMAL),
            running.generate([12], SamplingParams(max_new_tokens=6, temperature=1.0, seed=2**70)),  # the bug
            running.generate([fakes.NAN, 3], NORMAL),
            running.generate([fakes.POSINF], SamplingParams(max_new_tokens=4, temperature=0.7, seed=1)),
            running.generate([fakes.UNDECODABLE - 1], NORMAL),  # its first generated token is UNDECODABLE
            running.generate([20, 21, 22], NORMAL),
        )

    results = asyncio.run(main())
    (a, _), (seeded, _), (nan, _), (inf, _), (bad, _), (b, _) = results
    assert _ok(a) and _ok(b) and _ok(seeded), (a, b, seeded)
    assert nan[-1].finish_reason == "error" and "non-finite" in (nan[-1].error or "")
    assert nan[-1].error_kind == "internal"
    assert inf[-1].finish_reason == "error" and inf[-1].error_kind == "internal", inf
    assert bad[-1].finish_reason == "error" and "could not be processed" in (bad[-1].error or ""), bad
    assert all(sum(e.final for e in evs) == 1 for evs, _ in results)
    # the failed ones were released on the engine, and the loop still serves
    assert not running.engine.seqs or all(uid in {r.uid for _, r in results} for uid in running.engine.seqs)
    again, _ = asyncio.run(main_one(running))
    assert _ok(again) and running.crash is None


async def main_one(running: Running) -> tuple[list[Event], Request]:
    return await running.generate([30], NORMAL)


def test_a_lone_sequence_that_outgrows_the_kv_cache_ends_with_length() -> None:
    r = Running(fakes.ScriptedEngine(max_batch=4, kv_tokens=10))
    try:
        events, req = asyncio.run(
            r.generate([40, 41, 42], SamplingParams(max_new_tokens=50, ignore_eos=True))
        )
        assert events[-1].finish_reason == "length", events[-1]
        assert 3 + len(req.output_ids) <= 11, len(req.output_ids)  # stopped at the cache's end
        too_big, _ = asyncio.run(r.generate(list(range(3, 20)), NORMAL))  # 17 prompt tokens > 10
        assert too_big[-1].finish_reason == "error" and "KV cache" in (too_big[-1].error or "")
        assert _ok(asyncio.run(r.generate([44], NORMAL))[0])
    finally:
        r.stop()
    assert r.crash is None, r.crash


# -- hypothesis: hostile sampling values and misbehaving rows, many batches -----------------------
HOSTILE_FLOATS = st.one_of(
    st.floats(min_value=0.0, max_value=2.0),
    st.sampled_from([0.0, 5e-324, 1e-30, 1e-5, 2.0]),
)
params_st = st.builds(
    SamplingParams,
    max_new_tokens=st.integers(1, 12),
    temperature=HOSTILE_FLOATS,
    top_p=st.one_of(st.floats(min_value=1e-300, max_value=1.0), st.sampled_from([5e-324, 1e-9, 1.0])),
    top_k=st.one_of(st.integers(0, 2**31 - 1), st.sampled_from([0, 1, 63, 64, 65])),
    seed=st.one_of(
        st.none(), st.integers(-(2**63), 2**64 - 1), st.integers(min_value=2**64, max_value=2**200)
    ),
    stop=st.lists(st.text(max_size=8), max_size=4).map(tuple),
    ignore_eos=st.booleans(),
)
prompt_st = st.one_of(
    st.lists(st.integers(3, fakes.VOCAB - 1), min_size=1, max_size=20),
    st.sampled_from([[fakes.NAN], [fakes.POSINF, 4], [fakes.UNDECODABLE]]),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(st.tuples(prompt_st, params_st), min_size=1, max_size=12))
def test_fuzz_every_request_ends_once_and_the_loop_survives(running: Running, batch: list) -> None:
    async def main() -> list[tuple[list[Event], Request]]:
        return await asyncio.gather(*(running.generate(p, sp) for p, sp in batch))

    results = asyncio.run(main())
    assert running.crash is None and running.thread.is_alive()
    for (prompt, _), (events, req) in zip(batch, results, strict=True):
        final = events[-1]
        assert sum(e.final for e in events) == 1
        assert final.finish_reason in ("stop", "length", "error"), final
        if final.finish_reason == "error":  # only the rows that really misbehave
            assert prompt[0] in (fakes.NAN, fakes.POSINF) or fakes.UNDECODABLE in req.output_ids + prompt, (
                prompt, final,
            )  # fmt: skip
            assert final.error_kind == "internal" and final.error
    assert _ok(asyncio.run(main_one(running))[0])


class _SlowEngine(fakes.ScriptedEngine):
    """A step that hangs for a while: what a partitioned or hung peer looks like from rank 0."""

    def forward(self, uids, chunks):  # type: ignore[no-untyped-def]
        import time

        time.sleep(1.0)
        return super().forward(uids, chunks)


def test_health_reports_the_step_age_and_turns_stalled() -> None:

    from tpserve.config import ServeConfig
    from tpserve.core.service import Service

    r = Running(_SlowEngine())
    service = Service(ServeConfig(model_dir="/nonexistent", served_model_name="t", stall_timeout_s=0.4), 1)
    service.ready(r.sched, "scripted", "test", {}, [])
    try:
        assert service.health()["status"] == "ok" and service.health()["step_age_sec"] == 0.0

        async def main() -> list[dict]:
            task = asyncio.ensure_future(r.generate([10], SamplingParams(max_new_tokens=1)))
            seen = []
            while not task.done():
                seen.append(service.health())
                await asyncio.sleep(0.05)
            await task
            return seen

        seen = asyncio.run(main())
        stalled = [h for h in seen if h["status"] == "stalled"]
        assert stalled and all(h["step_age_sec"] > 0.4 for h in stalled), [h["step_age_sec"] for h in seen]
        assert service.health()["status"] == "ok"  # the step ended: healthy again
    finally:
        r.stop()


def test_metrics_kv_blocks_and_request_duration(running: Running) -> None:
    asyncio.run(running.generate([10, 11], NORMAL))
    for _ in range(20):  # the gauges follow every PHASE_FLUSH_STEPS steps or an idle loop
        asyncio.run(running.generate([12], NORMAL))
    text = running.sched.metrics.render().decode()
    assert (
        'tpserve_kv_cache_blocks{state="total"}' in text
        and "tpserve_request_duration_seconds_count 21.0" in text
    )
    assert "tpserve_gpu_" not in text  # absent (not zero) without a GPU
