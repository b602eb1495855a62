"""Rank 0 as the engine core, with the front end in its own process (--frontend-process, the default).

Rank 0's process keeps the engine: its main thread supervises (signals, the front end's life), the
engine thread runs the scheduler loop (tpserve.core.scheduler) and the I/O thread talks to the front
end. The front end process (tpserve.frontend.process: uvicorn, FastAPI, tokenizer, detokenization,
SSE) is a child started here; the two talk through ZeroMQ IPC sockets in a private directory
(mode 0700, removed once both ends are connected), typed messages of tpserve.core.ipc:

    front end --PUSH--> [core.sock] PULL  the I/O thread: Hello, Submit, Cancel, Drain, MetricsQuery
    engine thread --PUSH--> [frontend.sock] PULL  Ready, then ONE Outputs per step, then Stopped
    I/O thread    --PUSH--> [frontend.sock]       Status every 0.5 s (also while a step hangs),
                                                  MetricsReply

So the step loop shares its interpreter only with the I/O thread (a message per request, a status
twice a second), never with HTTP, JSON, detokenization or SSE.

Lives: the front end gets SIGKILL when this process dies (PR_SET_PDEATHSIG, and it watches its
stdin, a pipe held here, for EOF); when the front end exits while serving, this process exits 1 and
the launcher takes the group down (systemd restarts it). Drain: SIGTERM here or there -> 'draining'
(503 + Retry-After for new requests), in-flight requests finish (at most --drain-timeout), every
rank is told to shut down, the front end gets Stopped, stops HTTP and exits 0, then this exits 0.
When the group must exit (dist.fatal: a step past --step-timeout, a failed collective), the front
end first gets Stopped(why) and answers every request in flight with that error (503; a stream's
SSE error event), at most dist.FATAL_GRACE_S, then this process exits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from tpserve.config import API_KEY_ENV, ServeConfig
from tpserve.control import dist
from tpserve.core import ipc
from tpserve.core.metrics import Metrics
from tpserve.core.request import Event, Request
from tpserve.core.scheduler import Scheduler

log = logging.getLogger("tpserve.core.coreproc")

#: Steps' messages the engine thread may be ahead of the front end before send() waits (backpressure)
OUT_HWM = 10_000
#: ... and how long it waits before it gives up on a front end that stopped reading (then exit 1)
SEND_TIMEOUT_MS = 30_000
#: How often the I/O thread wakes to push a Status when nothing arrives (a phase change goes at once)
POLL_MS = 100
#: After Stopped: how long the front end may take to finish its responses and exit
FRONTEND_STOP_S = 15.0
IPC_PATH_MAX = 107  # sockaddr_un.sun_path, less the NUL


def _private_dir() -> Path:
    """A fresh 0700 directory for the two sockets (systemd: PrivateTmp); /tmp if TMPDIR is too long."""
    path = Path(tempfile.mkdtemp(prefix="tpserve-"))
    if len(str(path / "frontend.sock")) > IPC_PATH_MAX:
        path.rmdir()
        path = Path(tempfile.mkdtemp(prefix="tpserve-", dir="/tmp"))
    return path


class CoreServer:
    """Rank 0's end of the link: the sockets, the I/O thread, the step sink, the phase."""

    def __init__(self, cfg: ServeConfig, metrics: Metrics, world_size: int) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.world_size = world_size
        self.dir = _private_dir()
        self.core_path = self.dir / "core.sock"
        self.frontend_path = self.dir / "frontend.sock"
        self.ctx = zmq.Context(io_threads=1)
        self._in = self.ctx.socket(zmq.PULL)  # the I/O thread's
        self._in.setsockopt(zmq.LINGER, 0)
        self._in.setsockopt(zmq.RCVHWM, OUT_HWM)
        self._in.bind(f"ipc://{self.core_path}")
        self._out = self._push()  # the engine thread's (created here, used there only)
        self._status_out = self._push()  # the I/O thread's
        self.scheduler: Scheduler | None = None
        self.phase = "loading"  # loading | ok | draining | stopped
        self.requests: dict[int, Request] = {}  # uid -> the core's copy, until its final event
        self._eos: list[int] | None = None
        self._lock = threading.Lock()
        self.frontend_pid = 0
        self.frontend: subprocess.Popen[bytes] | None = None
        self._closing = threading.Event()
        self._io_thread: threading.Thread | None = None
        self._abort: str | None = None  # why the group exits: the I/O thread tells the front end

    def _push(self) -> zmq.Socket:
        sock = self.ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.SNDHWM, OUT_HWM)
        sock.setsockopt(zmq.SNDTIMEO, SEND_TIMEOUT_MS)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"ipc://{self.frontend_path}")  # zmq retries until the front end has bound it
        return sock

    # -- the front end's life (main thread) ---------------------------------------------------
    def start_frontend(self, log_level: str) -> subprocess.Popen[bytes]:
        """`python -m tpserve.frontend.process`, its settings as one JSON line on stdin; stdin stays
        open (its EOF tells the front end that this process is gone). Call from the main thread:
        PR_SET_PDEATHSIG fires when the thread that started the child ends."""
        spec = {
            "config": dataclasses.asdict(self.cfg),  # the API key too: by this pipe only
            "world_size": self.world_size,
            "core": str(self.core_path),
            "frontend": str(self.frontend_path),
            "dir": str(self.dir),
            "parent": os.getpid(),
            "log_level": log_level,
        }
        env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}  # not in its /proc/PID/environ
        proc = subprocess.Popen(  # stdout/stderr: rank 0's (the journal)
            [sys.executable, "-u", "-m", "tpserve.frontend.process"],
            stdin=subprocess.PIPE,
            close_fds=True,
            env=env,
        )
        assert proc.stdin is not None
        proc.stdin.write(json.dumps(spec).encode() + b"\n")
        proc.stdin.flush()
        self.frontend = proc
        log.info("front end process %d started (HTTP on %s:%d)", proc.pid, self.cfg.host, self.cfg.port)
        return proc

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def close(self) -> None:
        """Stop the I/O thread and close the sockets (tests; the process itself ends with os._exit)."""
        self._closing.set()
        if self._io_thread is not None:
            self._io_thread.join(5)
        self.ctx.destroy(linger=0)
        self.cleanup()

    # -- engine thread ------------------------------------------------------------------------
    def attach(self, scheduler: Scheduler) -> None:
        with self._lock:
            if self._eos is not None:
                scheduler.eos_ids = frozenset(self._eos)
            self.scheduler = scheduler

    def ready(self, engine_name: str, reason: str, ranks: list[dict[str, Any]]) -> None:
        assert self.scheduler is not None
        self._send(ipc.Ready(engine_name, reason, self.scheduler.describe(), ranks))
        with self._lock:
            if self.phase == "loading":
                self.phase = "ok"

    def deliver(self, batch: list[tuple[Request, Event]]) -> None:
        """The scheduler's sink: one step's events as ONE Outputs message (token ids, no text)."""
        uids: list[int] = []
        tokens: list[int] = []
        finals: list[ipc.Final] = []
        for req, ev in batch:
            if ev.finish_reason is None:
                uids.append(req.uid)
                tokens.append(ev.token_id)  # type: ignore[arg-type]
            else:
                finals.append(ipc.Final(req.uid, ev.finish_reason, ev.error, ev.error_kind,
                                        ev.prompt_tokens, ev.completion_tokens, ev.output_ids))  # fmt: skip
                self.requests.pop(req.uid, None)
        sched = self.scheduler
        assert sched is not None
        at = time.monotonic()
        self._send(ipc.Outputs(at, sched.steps, sched.queue_depth(), sched.in_flight(), uids, tokens, finals))

    def stopped(self) -> None:
        """The scheduler broadcast 'shutdown': the front end may stop (after every Outputs)."""
        with self._lock:
            self.phase = "stopped"
        self._send(ipc.Stopped())

    def _send(self, message: ipc.Message) -> None:
        try:
            self._out.send(ipc.encode(message))
        except zmq.Again:
            raise RuntimeError(
                f"the front end process has not read for {SEND_TIMEOUT_MS / 1000:.0f} s"
            ) from None

    # -- drain (main thread on SIGTERM, or the I/O thread on the front end's Drain) ------------
    def begin_drain(self, timeout_s: float) -> None:
        with self._lock:
            if self.phase != "ok" or self.scheduler is None:
                return
            self.phase = "draining"
            self.scheduler.request_shutdown(timeout_s)

    # -- the I/O thread -----------------------------------------------------------------------
    def start_io(self) -> threading.Thread:
        self._io_thread = threading.Thread(target=self._io_main, name="tpserve-core-io", daemon=True)
        self._io_thread.start()
        return self._io_thread

    def _io_main(self) -> None:
        try:
            self._io_loop()
        except Exception as exc:
            log.exception("the core's I/O thread failed")
            self.cleanup()
            dist.fatal(f"rank 0: front end link failed ({type(exc).__name__}: {exc})", 1)

    def abort(self, reason: str) -> None:
        """dist.fatal's hook (any thread but the I/O thread): the I/O thread sends Stopped(reason), the
        front end answers every request in flight with an error (503, retry; an SSE error event) and
        exits; this waits up to dist.FATAL_GRACE_S for that, then the exit goes on."""
        io, frontend = self._io_thread, self.frontend
        if frontend is None or io is None or not io.is_alive() or threading.current_thread() is io:
            return
        self._abort = reason
        with contextlib.suppress(subprocess.TimeoutExpired):
            frontend.wait(timeout=dist.FATAL_GRACE_S)

    def _io_loop(self) -> None:
        sent_at, sent_phase, aborted = 0.0, "", False
        while not self._closing.is_set():
            if self._abort is not None and not aborted:
                aborted = True
                self._reply(ipc.Stopped(self._abort))
            if self._in.poll(POLL_MS):
                while True:
                    try:
                        data = self._in.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._handle(ipc.decode(data))
            now = time.monotonic()
            if self.phase != sent_phase or now - sent_at >= ipc.STATUS_INTERVAL_S:
                sent_at, sent_phase = now, self.phase
                self._reply(self._status(now))

    def _reply(self, message: ipc.Message) -> None:
        """The I/O thread's messages: dropped (not waited for) when the front end is not reading."""
        with contextlib.suppress(zmq.Again):
            self._status_out.send(ipc.encode(message), zmq.NOBLOCK)

    def _status(self, now: float) -> ipc.Status:
        sched = self.scheduler
        if sched is None:
            return ipc.Status(now, os.getpid(), self.phase, 0.0, 0, 0, 0, {})
        return ipc.Status(
            now, os.getpid(), self.phase, sched.step_age(), sched.steps, sched.queue_depth(),
            sched.in_flight(), sched.describe(), sched.heartbeat_age(), sched.oom_cap,
        )  # fmt: skip

    def _handle(self, msg: ipc.Message) -> None:
        if isinstance(msg, ipc.Submit):
            self._submit(msg)
        elif isinstance(msg, ipc.Cancel):
            for uid in msg.uids:
                req = self.requests.get(uid)
                if req is not None:
                    req.cancel()
        elif isinstance(msg, ipc.Hello):
            self._hello(msg)
        elif isinstance(msg, ipc.Drain):
            log.info("the front end asks for a drain")
            self.begin_drain(msg.timeout_s)
        elif isinstance(msg, ipc.MetricsQuery):
            sched = self.scheduler
            if sched is not None:
                self.metrics.queue_depth.set(sched.queue_depth())
            self._reply(ipc.MetricsReply(msg.qid, self.metrics.render("core")))
        else:
            raise ipc.WireError(f"unexpected message from the front end: {type(msg).__name__}")

    def _hello(self, msg: ipc.Hello) -> None:
        with self._lock:
            self._eos = [int(t) for t in msg.eos_ids]
            if self.scheduler is not None:
                self.scheduler.eos_ids = frozenset(self._eos)
        self.frontend_pid = msg.pid
        # connected: nobody else may connect from now on, and nothing is left behind
        with contextlib.suppress(OSError):
            self.core_path.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()  # the second of the two ends to unlink removes the directory
        log.info("front end process %d connected (EOS ids %s)", msg.pid, self._eos)

    def _submit(self, msg: ipc.Submit) -> None:
        sched = self.scheduler
        refusal = None
        if sched is None or self.phase == "stopped":
            refusal = "the server is shutting down; retry" if sched else "the engine is loading; retry"
        elif msg.uid in self.requests:
            refusal = f"request id {msg.uid} is already running"
        if refusal is not None:  # the front end's own checks make this rare: a clean 503 all the same
            final = ipc.Final(msg.uid, "error", refusal, "capacity", len(msg.prompt_ids), 0, [])
            self._reply(ipc.Outputs(0.0, 0, 0, 0, [], [], [final]))  # at 0: carries no counts
            return
        assert sched is not None
        req = Request(list(msg.prompt_ids), msg.params, msg.timeout_s, None, msg.endpoint,
                      uid=msg.uid, created=msg.created)  # fmt: skip
        self.requests[msg.uid] = req
        sched.submit(req)


def _exit_description(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def run_core(cfg: ServeConfig, info: Any) -> int:
    """Rank 0 with the front end in its own process. Never returns (os._exit)."""
    from tpserve.engines.base import EngineError
    from tpserve.runtime import build_scheduler

    metrics = Metrics()
    core = CoreServer(cfg, metrics, info.world_size)
    level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
    frontend = core.start_frontend(level)
    core.start_io()
    dist.on_fatal(core.abort)
    finished = threading.Event()

    def watch_frontend() -> None:
        frontend.wait()
        finished.set()

    def engine_thread() -> None:
        try:
            scheduler, name, reason, reports = build_scheduler(cfg, info, metrics, None, (), core.deliver)
            core.attach(scheduler)
            core.ready(name, reason, reports)
            log.info(
                "serving %s with %s (%s) on %d rank(s)", cfg.served_model_name, name, reason, len(reports)
            )
        except EngineError as exc:
            core.cleanup()
            dist.fatal(f"rank 0: {exc}", 2)
        except Exception as exc:
            log.exception("start-up failed")
            core.cleanup()
            dist.fatal(f"rank 0: start-up failed ({type(exc).__name__}: {exc})", 1)
        try:
            scheduler.run()
            core.stopped()
        except Exception as exc:
            log.exception("scheduler failed")
            core.cleanup()
            dist.fatal(f"rank 0: step failed ({type(exc).__name__}: {exc})")
        finished.set()

    signals_seen: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        signals_seen.append(signum)
        if len(signals_seen) > 1:
            if signum == signal.SIGTERM:  # systemd's and the launcher's: the drain goes on
                log.info("SIGTERM again: already draining, ignored")
                return
            core.cleanup()
            dist.fatal(f"second signal {name}: exiting without draining", 1)
        if core.scheduler is None:
            core.cleanup()
            dist.fatal(f"{name} while loading: exiting", 1)
        log.info("%s: draining (%d in flight)", name, core.scheduler.in_flight())
        core.begin_drain(cfg.drain_timeout_s)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    threading.Thread(target=watch_frontend, name="tpserve-frontend-watch", daemon=True).start()
    threading.Thread(target=engine_thread, name="tpserve-engine", daemon=True).start()
    while not finished.wait(timeout=60):  # signals run here, between waits
        pass
    if core.phase != "stopped":
        core.cleanup()
        code = frontend.poll()
        dist.fatal(
            f"rank 0: the front end process {frontend.pid} ended ({_exit_description(code or 0)}) "
            f"while {'loading' if core.phase == 'loading' else 'serving'}; the group stops",
            1,
        )
    try:
        code = frontend.wait(timeout=FRONTEND_STOP_S)
        log.info("front end process %d ended (%s)", frontend.pid, _exit_description(code))
    except subprocess.TimeoutExpired:
        log.warning("front end process %d still running %.0f s after Stopped: killed", frontend.pid,
                    FRONTEND_STOP_S)  # fmt: skip
        frontend.kill()
    core.cleanup()
    logging.shutdown()
    os._exit(0)
