"""Rank 0's scheduler thread: builds each step, broadcasts it, samples, streams tokens back.

Requests arrive from the HTTP event loop (or, with the front end in its own process, from
tpserve.core.coreproc's receiving thread) through a thread-safe queue and join the running batch
at step boundaries (continuous batching). Each step carries, for every active sequence, its new
tokens (the whole prompt on its first step, then the last sampled token). Finished sequences are
released on every rank through the `release` list of the next broadcast message.

After every step all ranks agree on its outcome (Channel.agree) before rank 0 samples. A CUDA OOM on
any rank (`_out_of_memory`): no token comes out of the step, its sequences are freed on every rank
(a Recover message) and recomputed from their tokens, the next steps carry half as many sequences
(down to 1, growing back after OOM_RESTORE_STEPS good steps), and a single sequence that still does
not fit ends the newest request with 503 + Retry-After. The time of the last agreement is the
"heartbeat age" /health reports: an idle partition shows there (the heartbeat's agreement waits).

Asynchronous scheduling (`overlap`, issue 13; vLLM v1 does the same): when every row that gets a
token is greedy, the step's tokens stay on the device and the NEXT step is planned and launched
before they reach this host: its decoding rows name "the previous step's pick of row r" and every
rank copies that pick into its input on its own device. Then this thread takes the previous step's
tokens (`_collect`) while the GPU runs the next step, so the host's work (sampling's copy, streaming,
planning, DeepSpeed's batch preparation) hides behind the GPU's. What it costs: a request that ends
on a token nobody could predict (EOS, a stop string) has already been given one more row, wasted;
what is predictable (max_new_tokens, the context end) is not planned. Sampled (non-greedy) rows:
rank 0 samples them on its device into the picks and the next step has every rank take rank 0's
picks (its `shared` field: one broadcast on the data plane); measured on 2x H200 (session 11): 3.78
vs 4.43 ms ITL at 1 client, 6607 vs 5588 tok/s at 64, seeded samples equal. A preemption or a CUDA
OOM takes the synchronous path: every token on the host first.

A step's events go out together through `sink`: the event loop's queues (in-process) or ONE
message to the front end process (tpserve.core.coreproc), which then detokenizes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch

from tpserve.control import dist, ranks
from tpserve.control.messages import Heartbeat, Message, Recover, Shutdown, Step
from tpserve.control.ranks import Watchdog
from tpserve.core import output, policy
from tpserve.core.metrics import Metrics
from tpserve.core.request import Event, Request, deliver
from tpserve.core.sampling import Failed, make_generator, sample_batch, sample_rows_device, small_tensor
from tpserve.core.textstream import TextStream
from tpserve.engines.base import Engine, Picks

log = logging.getLogger("tpserve.core.scheduler")


PHASES = ("schedule", "broadcast", "forward", "sample", "emit")
PHASE_FLUSH_STEPS = 16
#: On a GPU, a step with more events than this hands them to the HTTP loop right after the NEXT
#: step's launch (see _step): one step later, but the loop's work then overlaps the GPU's.
DELIVER_NOW_MAX = 8
#: good steps after which a batch cap set by a CUDA OOM doubles (until it is gone)
OOM_RESTORE_STEPS = 32


@dataclasses.dataclass
class InFlight:
    """A step whose picks are still on their way to rank 0's host (asynchronous scheduling)."""

    step: int
    rows: list[tuple[Request, int]]  # each request that gets a token, and its row in the step
    picks: Picks
    #: rows of the step whose picks every rank must take from rank 0 (it sampled some): 0 = none
    shared: int = 0


class GroupBroken(RuntimeError):
    """The other ranks did not report a step's outcome: a dead or partitioned peer (fatal)."""


class Scheduler:
    def __init__(
        self,
        engine: Engine,
        channel: Any,
        decode: Callable[[list[int]], str] | None,
        eos_ids: Iterable[int],
        metrics: Metrics,
        max_batch_size: int,
        heartbeat_interval_s: float,
        watchdog: Watchdog,
        token_budget: int | None = None,
        sink: Callable[[list[tuple[Request, Event]]], None] = deliver,
        overlap: bool = False,
    ) -> None:
        """`decode` None: no detokenization here (the front end process does it and matches the
        stop strings; events then carry token ids only). `sink` gets each step's events. `overlap`:
        asynchronous scheduling (the engine keeps its picks on every rank: engine.keep_picks): greedy
        rows and sampled rows alike (sampled on rank 0's device, shared with the next step)."""
        self.engine = engine
        if engine.kv_blocks() is not None:
            metrics.register_kv()
        #: tokens per step (decodes + prompt chunks); None: whole prompts in one step
        self.token_budget = token_budget if token_budget else engine.step_token_budget
        self.channel = channel
        self.decode = decode
        self.sink = sink
        self.eos_ids = frozenset(eos_ids)
        self.metrics = metrics
        self.max_batch_size = min(max_batch_size, engine.max_batch_size)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.watchdog = watchdog
        self.pending: queue.Queue[Request | None] = queue.Queue()  # None: wake-up, no request
        self.active: list[Request] = []
        self._release: list[int] = []
        self._held: Request | None = None  # head of the line, waiting until the engine has room
        self._outbox: list[tuple[Request, Event]] = []  # events of this step, delivered together
        self._single_decode: dict[int, str] = {}  # decode([id]) cache shared by all TextStreams
        self._shutdown = threading.Event()
        self._drain_deadline = float("inf")
        self.stopped = threading.Event()
        self.steps = 0
        self._phase = dict.fromkeys(PHASES, 0.0)  # seconds per phase since the last flush
        self._steps_flushed = 0
        self._step_end = time.perf_counter()
        self._contact = time.monotonic()  # the last time every rank reported (Channel.agree)
        #: after a CUDA OOM: most sequences per step (None: no cap), and good steps since the last OOM
        self.oom_cap: int | None = None
        self._oom_good_steps = 0
        self.overlap = overlap
        self._inflight: InFlight | None = None  # the step launched ahead of its tokens
        self.steps_ahead = 0

    # -- called from the HTTP thread -------------------------------------------------------
    def submit(self, req: Request) -> None:
        self.pending.put(req)
        self.metrics.queue_depth.set(self.pending.qsize())

    def queue_depth(self) -> int:
        return self.pending.qsize() + (self._held is not None)

    def in_flight(self) -> int:
        return self.queue_depth() + len(self.active)

    def request_shutdown(self, drain_timeout_s: float = float("inf")) -> None:
        """Finish what is queued and running, then broadcast 'shutdown' and return from run().
        What is still queued or running after `drain_timeout_s` ends with a 503 (retry elsewhere)."""
        self._drain_deadline = time.monotonic() + drain_timeout_s
        self._shutdown.set()
        self.pending.put(None)  # wake the loop now instead of at the next heartbeat

    def step_age(self) -> float:
        """Seconds the current step has been running (0 between steps): a hung peer shows here."""
        return self.watchdog.busy_for()

    def heartbeat_age(self) -> float:
        """Seconds since every rank last reported (after a step, or an idle heartbeat every
        heartbeat_interval_s): a partitioned or dead peer shows here also while idle."""
        return time.monotonic() - self._contact

    def describe(self) -> dict[str, Any]:
        """The engine's live facts for /health (fastgen: free KV blocks, CUDA graphs so far)."""
        info = self.engine.describe()
        info["async_scheduling"] = {
            "enabled": self.overlap,
            "steps_launched_ahead": self.steps_ahead,  # before the previous step's tokens were here
            **info.get("async_scheduling", {}),
        }
        return info

    @property
    def pid(self) -> int:
        """The process that runs the engine loop (/health's engine_pid)."""
        return os.getpid()

    def abort(self, reason: str, grace_s: float = dist.FATAL_GRACE_S) -> None:
        """dist.fatal's hook with the in-process front end (any thread; the engine thread may be stuck
        in a collective): every request still here gets its final event, a 503 naming why (a stream:
        an SSE error event, then [DONE]), not a cut connection; the HTTP event loop, which is not
        stuck, gets up to `grace_s` to write them (each request's reader cancels it when done)."""
        message = output.stopped_message(reason)
        reqs = [r for r in [*self.active, self._held] if r is not None]
        while True:
            try:
                req = self.pending.get_nowait()
            except queue.Empty:
                break
            if req is not None:
                reqs.append(req)
        reqs = [r for r in reqs if r.finish_reason is None and not r.cancelled.is_set()]
        if not reqs:
            return
        self.sink([(r, output.final_event(r, "error", message)) for r in reqs])
        end = time.monotonic() + grace_s
        while time.monotonic() < end and not all(r.cancelled.is_set() for r in reqs):
            time.sleep(0.02)
        time.sleep(0.05)  # the last chunk from the socket buffer onto the wire

    def _drain_expired(self) -> None:
        """The drain timeout passed: every request still here ends with a clean 503."""
        reason = "the server is shutting down (drain timeout); retry"
        for req in list(self.active):
            self._finish(req, "error", error=reason)
        while True:
            try:
                req = self._held or self.pending.get_nowait()
            except queue.Empty:
                break
            self._held = None
            if req is not None:
                self._finish(req, "error", release=False, error=reason)

    # -- the loop (rank 0's engine thread) -------------------------------------------------
    def run(self) -> None:
        while True:
            if self._shutdown.is_set() and time.monotonic() > self._drain_deadline:
                self._drain_expired()
            self._reap()
            self._admit()
            if self._inflight is not None and not self.active:
                self._collect()  # every request of the step in flight ended meanwhile
            if not self.active:
                self._deliver()
                self._flush_phases()
                if self._shutdown.is_set() and self.pending.empty() and self._held is None:
                    self._broadcast(Shutdown)
                    self.stopped.set()
                    return
                try:
                    req = self.pending.get(timeout=self.heartbeat_interval_s)
                except queue.Empty:
                    self._broadcast(Heartbeat)
                    continue
                if req is not None:
                    self._start(req)
                self._step_end = time.perf_counter()  # idle time is not step time
                continue
            self._step()

    def _broadcast(self, kind: type[Message], *args: Any, **fields: Any) -> tuple[torch.Tensor | None, int]:
        """Send one message, run it here, and (but for Shutdown) wait for every rank's outcome:
        (logits of a Step, the worst outcome of all ranks: ranks.OK or ranks.OOM)."""
        message, self._release = kind(*args, **fields, release=self._release), []
        self.watchdog.busy()
        t0 = time.perf_counter()
        msg = self.channel.broadcast(message)
        t1 = time.perf_counter()
        logits, outcome = ranks.run(self.engine, msg)
        t2 = time.perf_counter()
        if kind is not Shutdown:
            try:
                outcome = self.channel.agree(outcome)
            except Exception as exc:
                raise GroupBroken(
                    f"the other ranks did not report the outcome of {kind.__name__} {self.steps} "
                    f"({type(exc).__name__}: {exc}); last heard from all {self.heartbeat_age():.1f} s ago"
                ) from exc
            self._contact = time.monotonic()
        self._phase["broadcast"] += t1 - t0 + time.perf_counter() - t2
        self._phase["forward"] += t2 - t1
        self.watchdog.idle()
        return logits, outcome

    def _admit(self) -> None:
        while len(self.active) < self.max_batch_size:
            req, self._held = self._held, None
            if req is None:
                try:
                    req = self.pending.get_nowait()
                except queue.Empty:
                    break
                if req is None:
                    continue
            if req.cancelled.is_set() or time.monotonic() > req.deadline:
                self._start(req)  # finishes it without running it
                continue
            decision = policy.admission(self.active, req, self._fits)
            if decision == "hold":
                self._held = req  # joins when running sequences finish
                break
            if decision == "refuse":
                self._finish(req, "error", release=False, error="the prompt does not fit the KV cache")
                break
            self._start(req)
        self.metrics.queue_depth.set(self.queue_depth())

    def _fits(self, batch: list[Request]) -> bool:
        """Ask the engine (KV blocks, sequence limits) whether one step over `batch` fits. A "no"
        while finished sequences still wait for their release: release them now on every rank (a
        heartbeat) and ask again, so a sequence is never refused or ended for room that is free."""
        uids, lengths = [r.uid for r in batch], [policy.new_tokens(r) for r in batch]
        if self.engine.can_schedule(uids, lengths):
            return True
        if not self._release:
            return False
        self._broadcast(Heartbeat)
        return self.engine.can_schedule(uids, lengths)

    def _start(self, req: Request) -> None:
        if req.cancelled.is_set() or time.monotonic() > req.deadline:
            self._finish(req, "cancelled" if req.cancelled.is_set() else "timeout", release=False)
            return
        try:
            req.generator = make_generator(req.params, getattr(self.engine, "device", "cpu"))
            if self.decode is not None:
                req.stream = TextStream(self.decode, req.params.stop, self._single_decode)
        except Exception as exc:  # a bad value of this request must not stop the engine thread
            log.warning("request %d refused at start: %s: %s", req.uid, type(exc).__name__, exc)
            self._finish(req, "error", release=False, error=f"bad request ({exc})", kind="internal")
            return
        self.active.append(req)

    def _reap(self) -> None:
        now = time.monotonic()
        for req in list(self.active):
            if req.cancelled.is_set():
                self._finish(req, "cancelled")
            elif now > req.deadline:
                self._finish(req, "timeout")

    def _step(self) -> None:
        ahead = self._inflight  # launched, its tokens not on the host yet: plan the next step past it
        running = self.active if ahead is None else [r for r in self.active if not self._ends_pending(r)]
        while True:
            plan = policy.plan_step(running, self._fits, self.token_budget, self.oom_cap)
            if ahead is not None and (plan.preempt or plan.at_capacity or plan.too_big or not plan.batch):
                self._collect()  # decide that with every token on the host: plan again
                return
            for req in plan.preempt:  # decoding outgrew the KV cache: the newest sequence goes (it retries)
                self._finish(req, "error", error="KV cache exhausted; request preempted, retry")
            for req in plan.at_capacity:  # a lone sequence that outgrows the whole cache ends where it is
                self._finish(req, "length")
            for req in plan.too_big:
                self._finish(req, "error", error="the prompt does not fit the KV cache", kind="internal")
            if plan.batch:
                break
            if not plan.preempt or not self.active:
                return
            running = self.active
            # one preempted, the others not planned: plan again, _fits frees its room first (a
            # heartbeat carries the release) when they do not fit without it
        batch, chunks = plan.batch, plan.chunks
        prefills = sum(not policy.decoding(r) for r in batch)
        if prefills:
            self.metrics.prefill_chunks.inc(prefills)
        uids = [r.uid for r in batch]
        self.metrics.batch_size.observe(len(batch))
        t0 = time.perf_counter()
        phase = self._phase
        phase["schedule"] += t0 - self._step_end
        shared = ahead.shared if ahead is not None else 0  # the planned rows name its picks
        logits, outcome = self._broadcast(Step, uids, chunks, shared=shared)
        self.steps += 1
        self.steps_ahead += ahead is not None
        if outcome != ranks.OK or logits is None:
            if ahead is not None:
                self._collect()  # its tokens are good: keep them before the step's sequences recompute
            self._out_of_memory(batch)
            return
        if self.oom_cap is not None:
            self._oom_good_steps += 1
            if self._oom_good_steps >= OOM_RESTORE_STEPS:
                self.oom_cap = self.oom_cap * 2 if self.oom_cap * 2 < self.max_batch_size else None
                self._oom_good_steps = 0
        # Events held back from the last step go out now: the HTTP event loop streams them while this
        # thread waits for the GPU (sample_batch releases the GIL), instead of taking the GIL in the
        # middle of the next step's kernel launches.
        self._deliver()
        # a sequence whose prompt is only partly in the engine has no next token yet
        done = policy.advance(plan)
        sampled = [batch[row] for row in done]
        if self.overlap and sampled:
            # asynchronous scheduling: this step's picks stay on the device for the next step (greedy:
            # every rank's own argmax; sampled rows: rank 0's, which the next step shares); rank 0
            # takes the previous step's tokens to the host while this one runs
            shared, ok = self._sample_on_device(logits, batch, done)
            if shared >= 0:
                picks = self.engine.picks_to_host(len(batch), ok)
                for row in done:
                    batch[row].pending = (self.steps, row)
                if ahead is not None:
                    self._collect()
                self._inflight = InFlight(self.steps, [(batch[row], row) for row in done], picks, shared)
                return
        if ahead is not None:
            self._collect()
        t1 = time.perf_counter()
        # logits stay where the engine left them (the GPU for fastgen): greedy rows are picked there
        # and only token ids cross to the host (a [64, 152064] fp32 copy + CPU argmax cost ~5 ms)
        rows = logits
        if len(done) != len(batch):
            rows = logits[torch.tensor(done, dtype=torch.long, device=logits.device)]
        try:
            tokens = sample_batch(rows, [r.params for r in sampled], [r.generator for r in sampled])
        except torch.cuda.OutOfMemoryError:  # after the forward: the engines advanced, the tokens are lost
            log.warning("step %d: CUDA out of memory while sampling %d row(s)", self.steps, len(sampled))
            self._out_of_memory(batch)
            return
        self._emit(sampled, tokens, t1, on_gpu=logits.device.type == "cuda")

    def _sample_on_device(
        self, logits: torch.Tensor, batch: list[Request], done: list[int]
    ) -> tuple[int, tuple[torch.Tensor, torch.Tensor] | None]:
        """The sampled rows' tokens into the engine's picks, on the device, nothing read back:
        (rows the next step must share, 0 when all are greedy; the rows' sound-sampling flags). -1:
        sampling raised (a CUDA OOM, a bad value): the synchronous path samples them row by row."""
        rows = [row for row in done if not batch[row].params.greedy]
        if not rows:
            return 0, None
        try:
            index = small_tensor(rows, logits.device, torch.long)
            reqs = [batch[row] for row in rows]
            tokens, sound = sample_rows_device(
                logits.index_select(0, index), [r.params for r in reqs], [r.generator for r in reqs]
            )
            self.engine.set_picks(index, tokens)
        except (RuntimeError, ValueError) as exc:  # incl. torch.OutOfMemoryError
            log.warning("step %d: sampling on the device failed (%s): synchronous path", self.steps, exc)
            return -1, None
        return len(batch), (index, sound)

    def _ends_pending(self, req: Request) -> bool:
        """Its token in flight ends it whatever it is (max_new_tokens, max_seq_len): plan it no more."""
        if req.pending is None:
            return False
        n = len(req.output_ids) + 1
        return n >= req.params.max_new_tokens or len(req.prompt_ids) + n >= self.engine.max_seq_len

    def _collect(self) -> None:
        """The step in flight's tokens to the host (waits for its device work), then emitted."""
        inflight, self._inflight = self._inflight, None
        if inflight is None:
            return
        t1 = time.perf_counter()
        picked, finite = inflight.picks.wait()
        sampled: list[Request] = []
        tokens: list[int | Failed] = []
        bad = Failed("the model produced non-finite logits (NaN/inf) or probabilities for this sequence")
        for req, row in inflight.rows:
            if req.pending is not None and req.pending[0] == inflight.step:
                req.pending = None
            if req.finish_reason is not None:  # ended while its step ran (a stop, a cancel): no token
                continue
            sampled.append(req)
            tokens.append(int(picked[row]) if finite[row] else bad)
        self._emit(sampled, tokens, t1, on_gpu=inflight.picks.done is not None)  # an async copy: CUDA

    def _emit(self, sampled: list[Request], tokens: list[int | Failed], t1: float, on_gpu: bool) -> None:
        """Each request's new token: text to stream, finished or not; the step's events go out."""
        t2 = time.perf_counter()
        now = time.monotonic()
        for req, token in zip(sampled, tokens, strict=True):
            req.prefilled = True
            if isinstance(token, Failed):
                log.warning("request %d failed in step %d: %s", req.uid, self.steps, token.reason)
                self._finish(req, "error", error=token.reason, kind="internal")
                continue
            try:
                self._on_token(req, token, now)
            except Exception as exc:  # detokenizing, stop strings: this request ends, the others go on
                log.exception("request %d: token %d could not be processed", req.uid, token)
                self._finish(
                    req, "error", error=f"token {token} could not be processed ({exc})", kind="internal"
                )
        self.metrics.output_tokens.inc(len(sampled))
        if not on_gpu or len(self._outbox) <= DELIVER_NOW_MAX:
            # now: few streams (lowest latency), or a synchronous engine (CPU: the next forward does
            # not overlap anything, holding events back would only delay them by a whole step)
            self._deliver()
        self._step_end = time.perf_counter()
        self._phase["sample"] += t2 - t1
        self._phase["emit"] += self._step_end - t2
        if self.steps % PHASE_FLUSH_STEPS == 0:
            self._flush_phases()

    def _out_of_memory(self, batch: list[Request]) -> None:
        """A CUDA OOM on some rank in the last step (all ranks agreed on it): no token came out.

        Every rank's state of the step's sequences is unknown now (autotp advances them one by one,
        fastgen registers new ones before its forward, a rank may have finished where another failed),
        so ALL of them, not only the step's new ones, are freed on every rank (a Recover: device
        synchronised, sequences released, CUDA cache emptied) and recomputed from their tokens: a
        decoding stream goes on where it was. The next steps carry half as many sequences (the
        oldest; down to 1); when a step of ONE sequence runs out of memory, the newest request ends
        with 503 + Retry-After (the oldest keep their place; it frees what the engine held of it).
        """
        self.metrics.oom_steps.inc()
        self._oom_good_steps = 0
        for req in batch:
            if req.uid not in self._release:
                self._release.append(req.uid)
            req.recompute()
        if len(batch) > 1:
            self.oom_cap = len(batch) // 2
            log.warning(
                "step %d: CUDA out of memory with %d sequences: freed, recomputed, at most %d per step",
                self.steps, len(batch), self.oom_cap,
            )  # fmt: skip
        elif self.active:
            victim = self.active[-1]
            self.oom_cap = 1
            log.warning(
                "step %d: CUDA out of memory with one sequence: request %d (the newest of %d) ends with 503",
                self.steps, victim.uid, len(self.active),
            )  # fmt: skip
            self._finish(victim, "error", error="out of GPU memory; retry later")
        self._broadcast(Recover)
        self._deliver()

    def _flush_phases(self) -> None:
        """Add the phase times to the Prometheus counters (every few steps: inc() takes a lock)."""
        for name, seconds in self._phase.items():
            self.metrics.step_seconds.labels(name).inc(seconds)
            self._phase[name] = 0.0
        self.metrics.steps.inc(self.steps - self._steps_flushed)
        self._steps_flushed = self.steps
        kv = self.engine.kv_blocks()
        if kv is not None:
            self.metrics.kv_blocks.labels("used").set(kv[0])
            self.metrics.kv_blocks.labels("total").set(kv[1])

    def _deliver(self) -> None:
        if self._outbox:
            batch, self._outbox = self._outbox, []
            self.sink(batch)

    def _on_token(self, req: Request, token: int, now: float) -> None:
        if req.first_token_at is None:
            req.first_token_at = now
            self.metrics.ttft.observe(now - req.created)
        else:
            self.metrics.itl.observe(now - (req.last_token_at or now))
        req.last_token_at = now
        delta, finish = output.on_token(req, token, self.eos_ids, self.engine.max_seq_len)
        if delta or (delta is not None and req.stream is None):
            self._outbox.append((req, Event(text=delta, token_id=token)))
        if finish:
            self._finish(req, finish)

    def _finish(
        self,
        req: Request,
        reason: str,
        release: bool = True,
        error: str | None = None,
        kind: str = "capacity",
    ) -> None:
        if req in self.active:
            self.active.remove(req)
        if release and req.prefill_pos > 0:  # the engine holds (part of) the sequence
            self._release.append(req.uid)
        req.finish_reason = reason
        self.metrics.finished.labels(reason=reason).inc()
        self.metrics.request_seconds.observe(time.monotonic() - req.created)
        final = output.final_event(req, reason, error, kind)
        self._outbox.append((req, final))
