"""The front end <-> engine core link (tpserve.core.ipc, coreproc.CoreServer, frontend.core_client)
without DeepSpeed: a real Scheduler thread over the model-free ScriptedEngine (tests/fakes.py) on the
core's side, a real Service + CoreClient on an event loop on the other, real ZeroMQ IPC sockets
between them (one process here; tests/test_frontend_process.py runs the real split under the
DeepSpeed launcher). What the front end streams must be exactly what the in-process path streams."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import fakes
import pytest

from tpserve.config import ServeConfig
from tpserve.control.dist import Channel
from tpserve.control.ranks import Watchdog
from tpserve.core import ipc
from tpserve.core.coreproc import CoreServer
from tpserve.core.metrics import Metrics
from tpserve.core.request import Event, Request
from tpserve.core.sampling import SamplingParams
from tpserve.core.scheduler import Scheduler
from tpserve.core.service import Service
from tpserve.engines.base import DistInfo
from tpserve.frontend.core_client import CoreClient

EOS = 0


class FakeTokenizer:
    eos_token_id = EOS

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return fakes.decode(ids)

    def __len__(self) -> int:
        return fakes.VOCAB


class FakeService(Service):
    def load_tokenizer(self) -> None:
        self.tokenizer, self.eos_ids = FakeTokenizer(), {EOS}


def config(**kw: Any) -> ServeConfig:
    return ServeConfig(model_dir="/nonexistent", served_model_name="t", request_timeout_s=30.0, **kw)


class Core:
    """The core's side: CoreServer + a Scheduler thread (no detokenizer: decode=None)."""

    def __init__(self, engine: fakes.ScriptedEngine, cfg: ServeConfig) -> None:
        self.metrics = Metrics()
        self.server = CoreServer(cfg, self.metrics, 1)
        self.sched = Scheduler(
            engine, Channel(DistInfo()), None, (), self.metrics, engine.max_batch_size, 0.5, Watchdog(0),
            None, self.server.deliver,
        )  # fmt: skip
        self.server.attach(self.sched)
        self.server.start_io()
        self.crash: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.server.ready("scripted", "test", [])
            self.sched.run()
            self.server.stopped()
        except BaseException as exc:
            self.crash = exc

    def close(self) -> None:
        if not self.sched.stopped.is_set():
            self.sched.request_shutdown(0)
        self.thread.join(10)
        self.server.close()


def linked(
    engine: fakes.ScriptedEngine,
    cfg: ServeConfig,
    body: Callable[[Core, Service, CoreClient], Awaitable[Any]],
) -> Any:
    """Run `body` on an event loop with a ready front end Service linked to a running core."""
    core = Core(engine, cfg)

    async def main() -> Any:
        service = FakeService(cfg, 1)
        srv = core.server
        client = CoreClient(service, str(srv.core_path), str(srv.frontend_path), str(srv.dir), os.getpid())
        service.core_metrics = client.core_metrics
        reader = asyncio.create_task(client.run())
        try:
            for _ in range(200):
                if service.status == "ok":
                    break
                await asyncio.sleep(0.02)
            assert service.status == "ok", service.status
            return await body(core, service, client)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            client.close()

    try:
        return asyncio.run(main())
    finally:
        core.close()
        assert core.crash is None, core.crash


async def events_of(service: Service, req: Request) -> list[Event]:
    return [ev async for ev in service.events(req)]


async def in_process(engine: fakes.ScriptedEngine, jobs: list[tuple[list[int], SamplingParams]]) -> list:
    """The same requests through the in-process path (the Scheduler detokenizes)."""
    sched = Scheduler(engine, Channel(DistInfo()), fakes.decode, {EOS}, Metrics(), 8, 0.5, Watchdog(0))
    thread = threading.Thread(target=sched.run, daemon=True)
    thread.start()
    loop = asyncio.get_running_loop()
    reqs = [Request(p, sp, 30.0, loop) for p, sp in jobs]
    for r in reqs:
        sched.submit(r)

    async def collect(req: Request) -> list[Event]:
        out = [await req.events.get()]
        while not out[-1].final:
            out.append(await req.events.get())
        return out

    results = await asyncio.gather(*(collect(r) for r in reqs))
    sched.request_shutdown()
    await asyncio.to_thread(thread.join, 10)
    return list(results)


def summary(events: list[Event]) -> tuple:
    final = events[-1]
    text = "".join(e.text for e in events)
    return text, final.finish_reason, final.completion_tokens, list(final.output_ids), final.error_kind


JOBS = [
    ([10, 11], SamplingParams(max_new_tokens=12)),
    ([20], SamplingParams(max_new_tokens=30, stop=("q",))),  # a stop string: ends in the front end
    ([30, 31, 32], SamplingParams(max_new_tokens=9, stop=("zz", "hij"))),  # stop across tokens
    ([50] * 14, SamplingParams(max_new_tokens=10, ignore_eos=True)),  # EOS (0) first, streamed as text
    ([50] * 14, SamplingParams(max_new_tokens=8)),  # EOS first: ends "stop" in the core, no text
    ([fakes.UNDECODABLE - 1], SamplingParams(max_new_tokens=5)),  # detokenizer failure (front end)
    ([fakes.NAN], SamplingParams(max_new_tokens=5)),  # non-finite logits (core)
]


def test_the_front_end_streams_exactly_what_the_in_process_path_streams() -> None:
    async def body(core: Core, service: Service, client: CoreClient) -> list:
        reqs = [service.new_request(p, sp, "/test") for p, sp in JOBS]
        return list(await asyncio.gather(*(events_of(service, r) for r in reqs)))

    split = linked(fakes.ScriptedEngine(), config(), body)
    alone = asyncio.run(in_process(fakes.ScriptedEngine(), JOBS))
    for job, a, b in zip(JOBS, split, alone, strict=True):
        assert summary(a) == summary(b), (job, summary(a), summary(b))
        assert sum(e.final for e in a) == 1
    texts = {s[0] for s in map(summary, split)}
    assert "".join(texts) and summary(split[1])[1] == "stop" and "q" not in summary(split[1])[0]
    assert summary(split[5])[1] == "error" and "could not be processed" in (split[5][-1].error or "")
    assert summary(split[6])[1] == "error" and "non-finite" in (split[6][-1].error or "")


def test_cancel_crosses_the_boundary_and_frees_the_sequence() -> None:
    engine = fakes.ScriptedEngine()

    async def body(core: Core, service: Service, client: CoreClient) -> None:
        req = service.new_request([5], SamplingParams(max_new_tokens=100_000, ignore_eos=True), "/test")
        stream: AsyncIterator[Event] = service.events(req)
        first = await anext(stream)
        assert first.token_id is not None and not first.final
        await stream.aclose()  # the consumer goes away: Service.events cancels the request
        for _ in range(200):
            if client.in_flight() == 0 and not engine.seqs:
                break
            await asyncio.sleep(0.02)
        assert client.in_flight() == 0 and not engine.seqs, (client.in_flight(), engine.seqs)
        assert req.uid not in core.server.requests and req.uid not in client.live
        # the link still serves
        again = await events_of(service, service.new_request([7], SamplingParams(max_new_tokens=3), "/t"))
        assert again[-1].finish_reason == "length" and again[-1].completion_tokens == 3

    linked(engine, config(), body)


class SlowEngine(fakes.ScriptedEngine):
    def forward(self, uids, chunks):  # type: ignore[no-untyped-def]
        time.sleep(1.2)
        return super().forward(uids, chunks)


def test_health_turns_stalled_while_a_core_step_hangs() -> None:
    async def body(core: Core, service: Service, client: CoreClient) -> list[dict]:
        health = service.health()
        assert health["status"] == "ok" and health["engine_pid"] == os.getpid()
        req = service.new_request([10], SamplingParams(max_new_tokens=1), "/test")
        task = asyncio.ensure_future(events_of(service, req))
        seen = []
        while not task.done():
            seen.append(service.health())
            await asyncio.sleep(0.05)
        assert (await task)[-1].finish_reason == "length"
        await asyncio.sleep(2 * ipc.STATUS_INTERVAL_S)  # the next Status: between steps again
        seen.append(service.health())
        return seen

    seen = linked(SlowEngine(), config(stall_timeout_s=0.6), body)
    stalled = [h for h in seen if h["status"] == "stalled"]
    assert stalled and all(h["step_age_sec"] > 0.6 for h in stalled), [h["step_age_sec"] for h in seen]
    assert seen[-1]["status"] == "ok" and seen[-1]["step_age_sec"] == 0.0


def test_metrics_come_from_both_processes_once_and_drain_stops_the_link() -> None:
    async def body(core: Core, service: Service, client: CoreClient) -> tuple[str, list[Event]]:
        await events_of(service, service.new_request([10, 11], SamplingParams(max_new_tokens=4), "/t"))
        text = (await service.metrics_text()).decode()
        running = service.new_request([12], SamplingParams(max_new_tokens=20), "/t")
        service.begin_drain()  # the front end's SIGTERM: Drain -> the core finishes, then Stopped
        late = await events_of(service, running)
        for _ in range(200):
            if client.stopped.is_set():
                break
            await asyncio.sleep(0.02)
        assert client.stopped.is_set() and service.status == "draining"
        return text, late

    text, late = linked(fakes.ScriptedEngine(), config(), body)
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(families) == len(set(families)), families  # every family once
    assert "tpserve_prompt_tokens_total" in families and "tpserve_output_tokens_total" in families
    assert "tpserve_output_tokens_total 4.0" in text and "tpserve_prompt_tokens_total 2.0" in text
    assert late[-1].finish_reason == "length" and late[-1].completion_tokens == 20


def test_every_message_survives_the_codec() -> None:
    messages = [
        ipc.Hello(1, [0, 2]),
        ipc.Submit(
            3, [1, 2, 3], SamplingParams(5, 0.5, 0.9, 3, 2**64 - 1, ("a", "</b>"), True), 1.5, 60.0, "/g"
        ),
        ipc.Submit(4, [7], SamplingParams(seed=-(2**63)), 2.0, 1.0),
        ipc.Cancel([1, 2]),
        ipc.Drain(6.0),
        ipc.MetricsQuery(4),
        ipc.Ready("autotp", "why", {"a": 1, "b": None}, [{"rank": 0}]),
        ipc.Outputs(1.0, 2, 3, 4, [1, 2], [5, 6], [ipc.Final(1, "stop", None, "capacity", 3, 4, [1, 2, 3])]),
        ipc.Outputs(1.0, 2, 0, 0, [], [], []),
        ipc.Stopped(),
        ipc.Stopped("a step has been running for more than 33 s"),
        ipc.Status(1.0, 2, "ok", 0.25, 1, 2, 3, {"x": [1, "你好"]}),
        ipc.MetricsReply(1, b"abc\n"),
    ]
    for message in messages:
        assert ipc.decode(ipc.encode(message)) == message
    for bad in (b"", b"\x93\x63\x01\x02", b"\x91\x00", b"\xc1"):
        with pytest.raises(ipc.WireError):
            ipc.decode(bad)


def test_the_socket_directory_is_gone_once_both_ends_are_connected() -> None:
    holder: dict[str, Path] = {}

    async def body(core: Core, service: Service, client: CoreClient) -> None:
        holder["dir"] = core.server.dir
        for _ in range(100):
            if not core.server.dir.exists():
                break
            await asyncio.sleep(0.02)

    linked(fakes.ScriptedEngine(), config(), body)
    assert not holder["dir"].exists()
