"""The front end process's engine: the engine core (rank 0) behind its ZeroMQ sockets.

`CoreClient` is what `Service` calls its scheduler (tpserve.core.service.Backend): `submit` sends a
Submit, a request's `cancel()` a Cancel. Its reader task, on the event loop, turns the core's
messages (tpserve.core.ipc) into each request's events: per step, the new token ids are
detokenized here (TextStream, stop strings) and queued as text deltas; a stop string that matches
ends the request here and tells the core (Cancel) to free the sequence; the core's final events
(EOS, length, timeout, errors) get the held-back text tail. Counts for /health and the admission
check (queue depth, in flight, steps) come with every step's Outputs and every Status; the step age
comes from the Status the core pushes every 0.5 s, so a hung step (or a silent core) still turns
/health to 'stalled'.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from tpserve.core import ipc, output
from tpserve.core.request import Event, Request
from tpserve.core.service import Service
from tpserve.core.textstream import TextStream

log = logging.getLogger("tpserve.frontend.core_client")

#: GET /metrics waits this long for the core's series (then serves the front end's alone)
METRICS_TIMEOUT_S = 2.0
#: A core silent for longer than this (no Status) counts the silence as step age (-> 'stalled')
SILENCE_S = 4 * ipc.STATUS_INTERVAL_S
#: Core messages handled per event-loop turn before the loop's other callbacks get theirs
READ_BATCH = 32


class CoreClient:
    def __init__(
        self, service: Service, core_path: str, frontend_path: str, directory: str, core_pid: int
    ) -> None:
        self.service = service
        self.core_path = core_path
        self.frontend_path = frontend_path
        self.directory = directory
        self.core_pid = core_pid
        self.ctx = zmq.asyncio.Context()
        self._in = self.ctx.socket(zmq.PULL)
        self._in.setsockopt(zmq.RCVHWM, 10_000)
        self._in.setsockopt(zmq.LINGER, 0)
        self._in.bind(f"ipc://{frontend_path}")
        self._out = self.ctx.socket(zmq.PUSH)
        self._out.setsockopt(zmq.LINGER, 0)
        self._out.connect(f"ipc://{core_path}")
        self.live: dict[int, Request] = {}  # submitted, not finished (uid -> request)
        self.stopped = threading.Event()
        self.steps = 0
        self._counts_at = 0.0  # `at` of the newest counts (Outputs and Status race on two sockets)
        self._core_queue = 0
        self._core_in_flight = 0
        self._status: ipc.Status | None = None
        self._status_seen = time.monotonic()
        self._ready: ipc.Ready | None = None
        self._tokenizer_loaded = False
        self._unlinked = False
        self._single_decode: dict[int, str] = {}  # decode([id]) cache shared by all TextStreams
        self._qids = itertools.count(1)
        self._metrics_waiters: dict[int, asyncio.Future[bytes]] = {}

    # -- the Backend calls (event loop) -----------------------------------------------------
    @property
    def pid(self) -> int:
        return self._status.pid if self._status else self.core_pid

    def submit(self, req: Request) -> None:
        req.stream = TextStream(self.service.decode, req.params.stop, self._single_decode)
        req.on_cancel = self._cancel
        self.live[req.uid] = req
        timeout_s = req.deadline - req.created
        self._send(ipc.Submit(req.uid, req.prompt_ids, req.params, req.created, timeout_s, req.endpoint))

    def queue_depth(self) -> int:
        """Requests here that the core does not run yet: queued there, or on their way."""
        return max(0, len(self.live) - (self._core_in_flight - self._core_queue))

    def in_flight(self) -> int:
        """Requests the engine still holds, or that are on their way to it."""
        return max(len(self.live), self._core_in_flight)

    def step_age(self) -> float:
        """The running step's age from the core's last Status, aged since; a silent core counts
        its silence (the I/O thread pushes every 0.5 s whatever the step loop does)."""
        now = time.monotonic()
        status = self._status
        silent = now - self._status_seen
        age = status.step_age + (now - status.at) if status is not None and status.step_age > 0 else 0.0
        return max(age, silent) if silent > SILENCE_S else age

    def heartbeat_age(self) -> float:
        """Seconds since every rank last answered, from the core's last Status, aged since (an idle
        partition: the core's heartbeat agreement waits, its I/O thread keeps pushing Status)."""
        status = self._status
        if status is None:
            return 0.0
        return status.heartbeat_age + (time.monotonic() - status.at)

    @property
    def oom_cap(self) -> int | None:
        return self._status.oom_cap if self._status is not None else None

    def describe(self) -> dict[str, Any]:
        if self._status is not None and self._status.engine_details:
            return self._status.engine_details
        return self._ready.info if self._ready else {}

    def request_shutdown(self, drain_timeout_s: float = float("inf")) -> None:
        self._send(ipc.Drain(drain_timeout_s))

    async def core_metrics(self) -> bytes:
        qid = next(self._qids)
        waiter = asyncio.get_running_loop().create_future()
        self._metrics_waiters[qid] = waiter
        self._send(ipc.MetricsQuery(qid))
        try:
            return await asyncio.wait_for(waiter, METRICS_TIMEOUT_S)
        except TimeoutError:
            return b"# the engine core's series are missing: no answer within %g s\n" % METRICS_TIMEOUT_S
        finally:
            self._metrics_waiters.pop(qid, None)

    def close(self) -> None:
        self.ctx.destroy(linger=0)

    # -- sending ------------------------------------------------------------------------------
    def _send(self, message: ipc.Message) -> None:
        self._out.send(ipc.encode(message))  # queued by zmq.asyncio in order if it cannot go now

    def _cancel(self, req: Request) -> None:
        """Request.cancel() (client gone, timeout): the core frees the sequence at its next step and
        answers with its final event ('cancelled'), which ends the request here too."""
        if req.uid in self.live:
            self._send(ipc.Cancel([req.uid]))

    # -- the reader task --------------------------------------------------------------------
    async def run(self) -> None:
        """Load the tokenizer (then Hello), read the core's messages until Stopped.

        The messages are read in the event loop's own readiness callback on the socket's FD (about
        half the CPU per message of awaiting zmq.asyncio's recv(): one message per engine step)."""
        loader = asyncio.create_task(self._load_tokenizer())
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        sock = zmq.Socket.shadow(self._in.underlying)  # plain (non-async) calls on the same socket
        fd = sock.getsockopt(zmq.FD)

        def on_readable() -> None:  # the FD is edge-triggered: read until nothing is left
            try:
                for _ in range(READ_BATCH):
                    if done.done() or not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                        return
                    self._handle(ipc.decode(sock.recv(zmq.NOBLOCK)))
                    if self.stopped.is_set():
                        done.set_result(None)
                # more is waiting: come back after the loop's other callbacks (HTTP writes, a client's
                # disconnect, a Cancel to send), which a core that steps faster than this process
                # reads would otherwise starve until its requests end
                loop.call_soon(on_readable)
            except Exception as exc:
                if not done.done():
                    done.set_exception(exc)

        loop.add_reader(fd, on_readable)
        on_readable()  # what arrived before the reader was there
        try:
            await done
        finally:
            loop.remove_reader(fd)
            loader.cancel()

    async def _load_tokenizer(self) -> None:
        await asyncio.to_thread(self.service.load_tokenizer)
        self._tokenizer_loaded = True
        self._send(ipc.Hello(os.getpid(), sorted(self.service.eos_ids)))
        self._maybe_ready()

    def _maybe_ready(self) -> None:
        ready = self._ready
        if ready is None or not self._tokenizer_loaded or self.service.scheduler is not None:
            return
        self.service.ready(self, ready.engine, ready.reason, ready.info, ready.ranks)
        log.info("engine core %d ready: %s (%s)", self.pid, ready.engine, ready.reason)

    def _counts(self, at: float, steps: int, queue_depth: int, in_flight: int) -> None:
        if at >= self._counts_at:
            self._counts_at, self.steps = at, steps
            self._core_queue, self._core_in_flight = queue_depth, in_flight

    def _handle(self, msg: ipc.Message) -> None:
        if isinstance(msg, ipc.Outputs):
            self._outputs(msg)
        elif isinstance(msg, ipc.Status):
            self._status, self._status_seen = msg, time.monotonic()
            self._counts(msg.at, msg.steps, msg.queue_depth, msg.in_flight)
            if msg.phase == "draining" and self.service.status == "ok":
                log.info("the engine core is draining: new requests get 503")
                self.service.status = "draining"
            self._unlink_when_connected()
        elif isinstance(msg, ipc.MetricsReply):
            waiter = self._metrics_waiters.get(msg.qid)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg.text)
        elif isinstance(msg, ipc.Ready):
            self._ready = msg
            self._unlink_when_connected()
            self._maybe_ready()
        elif isinstance(msg, ipc.Stopped):
            self._on_stopped(msg.error)
        else:
            raise ipc.WireError(f"unexpected message from the engine core: {type(msg).__name__}")

    def _unlink_when_connected(self) -> None:
        """Both core sockets have delivered (a Status and Ready): the socket file can go."""
        if self._unlinked or self._ready is None or self._status is None:
            return
        self._unlinked = True
        with contextlib.suppress(OSError):
            Path(self.frontend_path).unlink()
        with contextlib.suppress(OSError):
            Path(self.directory).rmdir()  # the second of the two ends to unlink removes the directory

    def _outputs(self, msg: ipc.Outputs) -> None:
        self._counts(msg.at, msg.steps, msg.queue_depth, msg.in_flight)
        live = self.live
        for uid, token in zip(msg.uids, msg.tokens, strict=True):
            req = live.get(uid)
            if req is None:  # ended here already (stop string, client gone): the core frees it
                continue
            req.output_ids.append(token)
            stream = req.stream
            assert stream is not None
            try:
                delta = stream.add(token)
            except Exception as exc:  # detokenizing: this request ends, the others go on
                log.exception("request %d: token %d could not be processed", uid, token)
                self._end(req, "error", f"token {token} could not be processed ({exc})", "internal")
                continue
            if delta:
                req.events.put_nowait(Event(text=delta, token_id=token))
            if stream.stopped:  # a stop string: the answer ends here, the core stops generating
                self._end(req, "stop")
        for final in msg.finals:
            req = live.pop(final.uid, None)
            if req is None:
                continue
            req.output_ids = list(final.output_ids)
            req.finish_reason = final.reason
            req.events.put_nowait(output.final_event(req, final.reason, final.error, final.kind))

    def _end(self, req: Request, reason: str, error: str | None = None, kind: str = "capacity") -> None:
        """End a request here (stop string, detokenizer failure) and have the core free it."""
        self.live.pop(req.uid, None)
        req.finish_reason = reason
        req.events.put_nowait(output.final_event(req, reason, error, kind))
        self._send(ipc.Cancel([req.uid]))

    def _on_stopped(self, error: str = "") -> None:
        """Every rank was told to shut down, or the group is exiting (`error`: why): whatever is
        still here gets a clean 503 (an SSE error event for a stream), not a cut connection."""
        message = output.stopped_message(error) if error else "the server is shutting down; retry"
        for req in list(self.live.values()):
            self._end(req, "error", message)
        if error:
            log.error("the engine core is exiting: %s", error)
        else:
            log.info("the engine core stopped its step loop")
        self.stopped.set()
