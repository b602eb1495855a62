#!/usr/bin/env python3
"""Host-side cost per token per stream of tpserve's serving path, WITHOUT a model (CPU only).

What runs is the real rank-0 code: FastAPI app (`tpserve.frontend.build_app`) → `Service` → the
`Scheduler` thread (continuous batching, `sample_batch`, `TextStream`, metrics, event delivery to
the event loop) → SSE formatting, with a trivial engine whose `forward` returns one-hot logits that
replay real token sequences (the synthetic byte-level BPE tokenizer on English + Chinese text, so
multi-byte characters are split across tokens). The control channel is the world-size-1 loopback,
so the broadcast is not measured here. Requests go through `httpx.ASGITransport` (no sockets).

Per setting (1 / 16 / 64 concurrent streams x 256 tokens; median of --reps runs):
  wall µs/tok  = wall time / (streams x tokens)            (host work per token of every stream)
  sched µs/tok = scheduler-thread CPU time, less the replay engine's forward, / (streams x tokens)
  loop µs/tok  = event-loop thread CPU time (HTTP app + SSE; also the in-process httpx client)
  step ms      = wall time / engine steps        (what each step costs on top of the model)
Also: TextStream.add alone, µs per token at output lengths 256 and 1024; and the control channel:
µs per `Channel.broadcast` of a decode-step message (batch 1 / 16 / 64) between 2 real gloo
processes on loopback (what rank 0 pays per step before any rank can start its forward).

    .venv/bin/python bench/serving_overhead.py --label after --save   # appends to results JSON
    .venv/bin/python bench/serving_overhead.py --show                  # table of saved labels
    git archive 91df1ac app/src | tar -x -C /tmp/before          # the code before the changes:
    TPSERVE_SRC=/tmp/before/app/src .venv/bin/python bench/serving_overhead.py --label before --save

--frontend-process: the same, with the front end in this process (Service + CoreClient + the app)
and the engine core in a spawned one (CoreServer + Scheduler over the same replay engine), linked by
the real ZeroMQ IPC sockets as rank 0 runs them; sched µs/tok is then the core process's loop thread
(no detokenization there), loop µs/tok this process's event loop (detokenization moved here).

Every streamed text is checked against the tokenizer's full decode of the replayed tokens.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# TPSERVE_SRC: another revision's app/src (from `git archive <rev> app/src`) to measure that one
sys.path.insert(0, os.environ.get("TPSERVE_SRC") or str(ROOT / "app" / "src"))
sys.path.insert(1, str(ROOT / "app" / "tests"))  # the fake engines are test fixtures (fakes.py)

import torch  # noqa: E402
from fakes import ReplayEngine  # noqa: E402
from tpserve.config import ServeConfig  # noqa: E402
from tpserve.control.dist import Channel  # noqa: E402
from tpserve.control.messages import Step  # noqa: E402
from tpserve.control.ranks import Watchdog  # noqa: E402
from tpserve.core.scheduler import Scheduler  # noqa: E402
from tpserve.core.service import Service  # noqa: E402
from tpserve.core.textstream import TextStream  # noqa: E402
from tpserve.engines.base import DistInfo  # noqa: E402
from tpserve.frontend import build_app  # noqa: E402
from tpserve.tools.synthetic import build_tokenizer  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "serving_overhead.json"
VOCAB = 2048  # ReplayEngine's (app/tests/fakes.py)
TEXT = (
    "Tensor parallelism splits every weight matrix across the ranks; 你好,请介绍一下你自己。"
    " The scheduler streams tokens back to each client as server-sent events. 数据并行和张量并行。 "
)


def token_scripts(tok: Any, n: int, length: int) -> list[list[int]]:
    """n token sequences of `length` real tokens, each starting at a different place of TEXT."""
    ids = tok.encode(TEXT * (1 + (n + length) // 20), add_special_tokens=False)
    return [ids[i * 7 : i * 7 + length] for i in range(n)]


def run_setting(tok: Any, streams: int, tokens: int) -> dict[str, float]:
    scripts = token_scripts(tok, streams, tokens)
    # each stream's prompt is [marker] so the engine knows which script to replay
    markers = list(range(10, 10 + streams))
    engine = ReplayEngine(dict(zip(markers, scripts, strict=True)), max_batch=max(64, streams))
    with tempfile.TemporaryDirectory() as model_dir:
        cfg = ServeConfig(
            model_dir=model_dir,
            served_model_name="bench",
            max_batch_size=engine.max_batch_size,
            max_new_tokens=tokens,
            max_queue=10_000,
            request_timeout_s=600.0,
        )
        service = Service(cfg, world_size=1)
        service.tokenizer = tok
        service.eos_ids = {int(tok.eos_token_id)}
        sched = Scheduler(
            engine,
            Channel(DistInfo()),
            service.decode,
            service.eos_ids,
            service.metrics,
            max_batch_size=engine.max_batch_size,
            heartbeat_interval_s=5.0,
            watchdog=Watchdog(0),
        )
        cpu: dict[str, float] = {}

        def sched_main() -> None:
            sched.run()
            cpu["sched"] = time.thread_time()

        thread = threading.Thread(target=sched_main, name="bench-scheduler", daemon=True)
        thread.start()
        service.ready(sched, "replay", "benchmark", {"max_seq_len": engine.max_seq_len}, [])
        app = build_app(service)

        async def main() -> tuple[list[str], float, float]:
            import httpx

            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
                t0, c0 = time.perf_counter(), time.thread_time()
                texts = await asyncio.gather(*(_one(client, m, tokens) for m in markers))
                return texts, time.perf_counter() - t0, time.thread_time() - c0

        steps0 = sched.steps
        texts, wall, loop_cpu = asyncio.run(main())
        steps = sched.steps - steps0
        service.begin_drain()
        thread.join(30)
    return _result(
        tok, texts, scripts, streams * tokens, wall, cpu["sched"] - engine.cpu_s, loop_cpu, steps
    )


def _core_process(scripts: dict[int, list[int]], max_batch: int, tokens: int, out: Any) -> None:
    """The engine core of --frontend-process: CoreServer + a Scheduler (no detokenizer) in this
    spawned process's main thread; reports the loop thread's CPU when the front end drains it."""
    from tpserve.core.coreproc import CoreServer
    from tpserve.core.metrics import Metrics

    torch.set_num_threads(1)
    engine = ReplayEngine(scripts, max_batch=max_batch)
    with tempfile.TemporaryDirectory() as model_dir:
        cfg = _config(model_dir, engine.max_batch_size, tokens)
        metrics = Metrics()
        core = CoreServer(cfg, metrics, 1)
        sched = Scheduler(
            engine, Channel(DistInfo()), None, (), metrics, engine.max_batch_size, 5.0, Watchdog(0),
            None, core.deliver,
        )  # fmt: skip
        core.attach(sched)
        out.put((str(core.core_path), str(core.frontend_path), str(core.dir), os.getpid()))
        core.start_io()
        core.ready("replay", "benchmark", [])
        c0 = time.thread_time()
        sched.run()
        cpu = time.thread_time() - c0
        core.stopped()
        out.put({"sched": cpu, "engine": engine.cpu_s, "steps": sched.steps})
        time.sleep(1.0)  # Stopped on its way before the sockets go


def _config(model_dir: str, max_batch: int, tokens: int) -> ServeConfig:
    return ServeConfig(
        model_dir=model_dir,
        served_model_name="bench",
        max_batch_size=max_batch,
        max_new_tokens=tokens,
        max_queue=10_000,
        request_timeout_s=600.0,
    )


def run_setting_split(tok: Any, streams: int, tokens: int) -> dict[str, float]:
    """run_setting with the engine core in its own process (--frontend-process)."""
    import multiprocessing as mp

    from tpserve.frontend.core_client import CoreClient

    scripts = token_scripts(tok, streams, tokens)
    markers = list(range(10, 10 + streams))
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    core = ctx.Process(
        target=_core_process,
        args=(dict(zip(markers, scripts, strict=True)), max(64, streams), tokens, out),
    )
    core.start()
    core_path, frontend_path, directory, core_pid = out.get(timeout=120)

    class BenchService(Service):
        def load_tokenizer(self) -> None:
            self.tokenizer, self.eos_ids = tok, {int(tok.eos_token_id)}

    with tempfile.TemporaryDirectory() as model_dir:
        service = BenchService(_config(model_dir, max(64, streams), tokens), world_size=1)

        async def main() -> tuple[list[str], float, float]:
            import httpx

            client = CoreClient(service, core_path, frontend_path, directory, core_pid)
            service.core_metrics = client.core_metrics
            reader = asyncio.create_task(client.run())
            while service.status != "ok":
                await asyncio.sleep(0.01)
            app = build_app(service)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
                t0, c0 = time.perf_counter(), time.thread_time()
                texts = await asyncio.gather(*(_one(http, m, tokens) for m in markers))
                wall, loop_cpu = time.perf_counter() - t0, time.thread_time() - c0
            service.begin_drain()
            await reader
            client.close()
            return texts, wall, loop_cpu

        texts, wall, loop_cpu = asyncio.run(main())
    res = out.get(timeout=60)
    core.join(30)
    return _result(
        tok,
        texts,
        scripts,
        streams * tokens,
        wall,
        res["sched"] - res["engine"],
        loop_cpu,
        res["steps"],
    )


def _result(
    tok: Any,
    texts: list[str],
    scripts: Any,
    n: int,
    wall: float,
    sched_cpu: float,
    loop_cpu: float,
    steps: int,
) -> dict[str, float]:
    """Check every streamed text against a full decode of its script, then the per-token figures."""
    for text, script in zip(texts, scripts, strict=True):
        expected = tok.decode(script, skip_special_tokens=True)
        assert text == expected, f"streamed text != full decode:\n{text!r}\n{expected!r}"
    return {
        "wall_us_per_token": 1e6 * wall / n,
        "sched_cpu_us_per_token": 1e6 * sched_cpu / n,
        "loop_cpu_us_per_token": 1e6 * loop_cpu / n,
        "step_ms": 1e3 * wall / max(steps, 1),
        "steps": steps,
    }


async def _one(client: Any, marker: int, tokens: int) -> str:
    body = {
        "model": "bench",
        "prompt": [marker],
        "max_tokens": tokens,
        "stream": True,
        "temperature": 0,
    }
    resp = await client.post("/v1/completions", json=body)
    assert resp.status_code == 200, resp.text
    text = []
    for line in resp.text.split("\n\n"):
        if line.startswith("data: {"):
            text.append(json.loads(line[6:])["choices"][0]["text"])
    return "".join(text)


def textstream_cost(tok: Any, length: int, reps: int) -> float:
    """µs per TextStream.add over one stream of `length` tokens (median of reps)."""
    ids = token_scripts(tok, 1, length)[0]
    while len(ids) < length:
        ids += ids
    ids = ids[:length]

    def decode(x: list[int]) -> str:
        return tok.decode(x, skip_special_tokens=True)

    cache: dict[int, str] = {}  # as the scheduler does (one cache per server), where supported
    extra = (cache,) if "single_cache" in inspect.signature(TextStream).parameters else ()
    times = []
    for _ in range(reps):
        stream = TextStream(decode, ["</answer>"], *extra)
        t0 = time.perf_counter()
        out = [stream.add(t) for t in ids]
        out.append(stream.flush())
        times.append(time.perf_counter() - t0)
        assert "".join(out) == decode(ids)
    return 1e6 * statistics.median(times) / length


def _channel_rank(rank: int, port: int, counts: list[int], iters: int, out: Any) -> None:
    """One of 2 gloo processes: time Channel.broadcast of decode-step messages (bs = counts)."""
    import datetime as dt

    import torch.distributed as tdist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tdist.init_process_group("gloo", rank=rank, world_size=2)
    group = tdist.new_group(backend="gloo", timeout=dt.timedelta(seconds=60))
    channel = Channel(DistInfo(rank=rank, world_size=2, local_size=2), group)
    result = {}
    for n in counts:
        msg = Step(list(range(1000, 1000 + n)), [[151000 + i] for i in range(n)], [7])
        times = []
        for _ in range(3):
            for _ in range(iters // 10):  # warm-up
                channel.broadcast(msg if rank == 0 else None)
            t0, c0 = time.perf_counter(), time.thread_time()
            for _ in range(iters):
                got = channel.broadcast(msg if rank == 0 else None)
            times.append((time.perf_counter() - t0, time.thread_time() - c0))
            assert got == msg
        wall, cpu = sorted(times)[1]
        result[str(n)] = {
            "wall_us": round(1e6 * wall / iters, 1),
            "cpu_us": round(1e6 * cpu / iters, 1),
        }
    out.put((rank, result))


def channel_cost(counts: list[int], iters: int = 400) -> dict[str, Any]:
    """µs per control-channel broadcast of a decode step between 2 real gloo ranks on loopback."""
    import multiprocessing as mp
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_channel_rank, args=(r, port, counts, iters, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    res = dict(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(30)
    return {"rank0": res[0], "rank1": res[1]}


def measure(
    reps: int, tokens: int, stream_counts: list[int], split: bool = False
) -> dict[str, Any]:
    torch.set_num_threads(1)  # idle OpenMP workers spinning on a busy host would swamp the numbers
    tok = build_tokenizer(VOCAB)
    out: dict[str, Any] = {"serving": {}, "textstream_us_per_add": {}}
    for length in (256, 1024):
        out["textstream_us_per_add"][str(length)] = round(textstream_cost(tok, length, reps), 2)
    out["channel"] = channel_cost(stream_counts)
    print(f"  channel: {out['channel']}", file=sys.stderr)
    setting = run_setting_split if split else run_setting
    for n in stream_counts:
        runs = [setting(tok, n, tokens) for _ in range(reps)]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        out["serving"][str(n)] = {k: round(v, 3) for k, v in med.items()}
        print(f"  {n:3d} streams: {out['serving'][str(n)]}", file=sys.stderr)
    return out


def table(results: dict[str, Any]) -> str:
    rows = [
        "| label | streams | wall µs/tok | sched CPU µs/tok | loop CPU µs/tok | step ms |",
        "|---|---|---|---|---|---|",
    ]
    for label, res in results.items():
        for n, r in res["serving"].items():
            rows.append(
                f"| {label} | {n} | {r['wall_us_per_token']:.1f} | "
                f"{r['sched_cpu_us_per_token']:.1f} | "
                f"{r['loop_cpu_us_per_token']:.1f} | {r['step_ms']:.2f} |"
            )
    rows += [
        "",
        "| label | bs | channel broadcast µs (rank 0 wall / CPU) | rank 1 CPU µs |",
        "|---|---|---|---|",
    ]
    for label, res in results.items():
        for n, r0 in res.get("channel", {}).get("rank0", {}).items():
            r1 = res["channel"]["rank1"][n]
            rows.append(
                f"| {label} | {n} | {r0['wall_us']:.1f} / {r0['cpu_us']:.1f} | {r1['cpu_us']:.1f} |"
            )
    rows += ["", "| label | TextStream.add µs/tok @256 | @1024 |", "|---|---|---|"]
    for label, res in results.items():
        ts = res["textstream_us_per_add"]
        rows.append(f"| {label} | {ts['256']:.1f} | {ts['1024']:.1f} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--label", default="current", help="name of this run (before / after)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--streams", default="1,16,64", help="comma-separated concurrent stream counts")
    where = RESULTS.relative_to(ROOT)
    ap.add_argument("--save", action="store_true", help=f"store under --label in {where}")
    ap.add_argument("--show", action="store_true", help="only print the saved table")
    ap.add_argument(
        "--frontend-process",
        action="store_true",
        help="the engine core in its own process (ZeroMQ link)",
    )
    args = ap.parse_args(argv)
    saved: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.show:
        print(table(saved.get("results", {})))
        return 0
    t0 = time.time()
    res = measure(
        args.reps, args.tokens, [int(s) for s in args.streams.split(",")], args.frontend_process
    )
    res["meta"] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
        "host": platform.node(),
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 1),  # a busy host inflates the wall numbers
        "reps": args.reps,
        "tokens": args.tokens,
        "frontend_process": args.frontend_process,
    }
    if args.save:
        saved.setdefault("results", {})[args.label] = res
        RESULTS.write_text(json.dumps(saved, indent=2, ensure_ascii=False) + "\n")
    print(table({**saved.get("results", {}), args.label: res}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
