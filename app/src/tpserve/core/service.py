"""Rank 0's view of the model service: state for /health, tokenizer, and request submission.

The HTTP layer talks to this object only; it never sees an engine. Behind it is a `Backend`: the
step loop itself (tpserve.core.scheduler, --no-frontend-process) or, in the front end process, the
client of the engine core process (tpserve.frontend.core_client) with the same calls.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from tpserve import __version__
from tpserve.config import ServeConfig
from tpserve.core.metrics import Metrics
from tpserve.core.request import Event, Request
from tpserve.core.sampling import SamplingParams


class Backend(Protocol):
    """What the service needs from the engine loop (tpserve.core.scheduler.Scheduler or, across
    the process boundary, tpserve.frontend.core_client.CoreClient)."""

    steps: int
    stopped: threading.Event

    @property
    def pid(self) -> int: ...

    def submit(self, req: Request) -> None: ...

    def queue_depth(self) -> int: ...

    def in_flight(self) -> int: ...

    def step_age(self) -> float: ...

    def describe(self) -> dict[str, Any]: ...

    def request_shutdown(self, drain_timeout_s: float = ...) -> None: ...


class Service:
    def __init__(self, config: ServeConfig, world_size: int) -> None:
        self.config = config
        self.metrics = Metrics()
        self.status = "loading"
        self.world_size = world_size
        self.started = time.time()
        self.engine_name = config.engine
        self.engine_reason = "loading"
        self.engine_info: dict[str, Any] = {}
        self.ranks: list[dict[str, Any]] = []
        self.tokenizer: Any = None
        self.scheduler: Backend | None = None
        #: the front end process: the engine core's /metrics series (tpserve.frontend.core_client)
        self.core_metrics: Callable[[], Awaitable[bytes]] | None = None
        self.max_seq_len = 0
        self.eos_ids: set[int] = set()
        self.synthetic = self._is_synthetic(config.model_dir)

    @staticmethod
    def _is_synthetic(model_dir: str) -> bool:
        try:
            return bool(json.loads((Path(model_dir) / "config.json").read_text()).get("tpserve_synthetic"))
        except (OSError, ValueError):
            return False

    # -- lifecycle (called from the engine thread) -----------------------------------------
    def load_tokenizer(self) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.config.model_dir)
        self.eos_ids = set()
        if self.tokenizer.eos_token_id is not None:
            self.eos_ids.add(int(self.tokenizer.eos_token_id))
        gen_cfg = Path(self.config.model_dir) / "generation_config.json"
        if gen_cfg.exists():
            eos = json.loads(gen_cfg.read_text()).get("eos_token_id")
            self.eos_ids.update([eos] if isinstance(eos, int) else (eos or []))

    @property
    def vocab_size(self) -> int:
        """Token ids a prompt may hold: the tokenizer's (0 while loading)."""
        return len(self.tokenizer) if self.tokenizer is not None else 0

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def ready(
        self,
        scheduler: Backend,
        engine_name: str,
        reason: str,
        info: dict[str, Any],
        ranks: list[dict[str, Any]],
    ) -> None:
        self.scheduler = scheduler
        self.engine_name = engine_name
        self.engine_reason = reason
        self.engine_info = info
        self.ranks = ranks
        self.max_seq_len = int(info.get("max_seq_len") or 0)
        self.status = "ok"

    def queue_depth(self) -> int:
        return self.scheduler.queue_depth() if self.scheduler else 0

    def begin_drain(self) -> None:
        self.status = "draining"
        if self.scheduler is not None:
            self.scheduler.request_shutdown(self.config.drain_timeout_s)

    @property
    def accepting(self) -> bool:
        return self.status == "ok"

    # -- tokenization ----------------------------------------------------------------------
    def encode_text(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
        return self.encode_text(text)

    # -- generation ------------------------------------------------------------------------
    def new_request(self, prompt_ids: list[int], params: SamplingParams, endpoint: str) -> Request:
        req = Request(prompt_ids, params, self.config.request_timeout_s, asyncio.get_running_loop(), endpoint)
        self.metrics.prompt_tokens.inc(len(prompt_ids))
        assert self.scheduler is not None
        self.scheduler.submit(req)
        return req

    async def events(self, req: Request) -> AsyncIterator[Event]:
        """Events of one request until its final one; cancels it if the consumer goes away."""
        self.metrics.in_flight.inc()
        try:
            while True:
                if not req.events.empty():  # already delivered: no wait_for task per token
                    event = req.events.get_nowait()
                else:
                    remaining = req.deadline - time.monotonic() + 2.0  # the scheduler times out first
                    try:
                        event = await asyncio.wait_for(req.events.get(), timeout=max(0.1, remaining))
                    except TimeoutError:
                        req.cancel()
                        yield Event(finish_reason="timeout", prompt_tokens=len(req.prompt_ids))
                        return
                yield event
                if event.final:
                    return
        finally:
            req.cancel()  # no-op when finished; frees the sequence when the client went away
            self.metrics.in_flight.dec()

    # -- /metrics --------------------------------------------------------------------------
    async def metrics_text(self) -> bytes:
        """Every series; in the front end process its own ones plus the engine core's."""
        self.metrics.queue_depth.set(self.queue_depth())
        if self.core_metrics is None:
            return self.metrics.render()
        return self.metrics.render("frontend") + await self.core_metrics()

    # -- /health ---------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        sched = self.scheduler
        step_age = sched.step_age() if sched else 0.0
        heard = sched.heartbeat_age() if sched else 0.0
        status, stall = self.status, self.config.stall_timeout_s
        reason = None
        # idle, the ranks are asked every heartbeat interval: an age below two of them is no news
        if status == "ok" and (step_age > stall or heard > max(stall, 2 * self.config.heartbeat_interval_s)):
            status = "stalled"  # a step that never ends, or an idle heartbeat nobody answers
            reason = (
                f"a step has been running for {step_age:.0f} s (a hung or partitioned peer)"
                if step_age > stall
                else f"the other ranks have not answered for {heard:.0f} s (a partitioned or dead peer)"
            )
        return {
            "status": status,
            "rank": 0,
            "stall_reason": reason,
            "step_age_sec": round(step_age, 3),
            "heartbeat_age_sec": round(heard, 3),
            "stall_timeout_sec": stall,
            "model": self.config.served_model_name,
            "model_dir": self.config.model_dir,
            "synthetic_model": self.synthetic,
            "engine": self.engine_name,
            "engine_reason": self.engine_reason,
            "dtype": self.engine_info.get("dtype"),
            "device": self.engine_info.get("device"),
            "world_size": self.world_size,
            "tp_size": self.engine_info.get("tp_size"),
            "max_seq_len": self.max_seq_len,
            "max_batch_size": self.config.max_batch_size,
            # live (fastgen: free KV blocks, the CUDA graphs captured so far); cheap reads of rank 0's engine
            "engine_details": sched.describe() if sched else self.engine_info,
            "ranks": self.ranks,
            "queue_depth": sched.queue_depth() if sched else 0,
            "in_flight": sched.in_flight() if sched else 0,
            "steps": sched.steps if sched else 0,
            "oom_batch_cap": sched.oom_cap if sched else None,  # sequences per step since a CUDA OOM
            # the HTTP handler's process and the engine loop's: different with --frontend-process
            "frontend_process": self.config.frontend_process,
            "frontend_pid": os.getpid(),
            "engine_pid": sched.pid if sched else None,
            "host": socket.gethostname(),
            "uptime_sec": round(time.time() - self.started, 1),
            "version": __version__,
            "api_key_required": self.config.api_key is not None,
        }
