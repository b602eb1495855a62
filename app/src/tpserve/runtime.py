"""Bring one rank up (process group, engine choice, engine, sharding report) and run its role.

Exit codes: 2 = the configuration cannot work (EngineError: model/engine/TP/memory; argparse's
usage errors are 2 too): systemd does not restart it (RestartPreventExitStatus=2) and serve.yml
shows the journal; 1 = anything else at start-up or a broken group (may be transient: restarted)."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tpserve.config import ServeConfig
from tpserve.control import dist
from tpserve.engines.base import DistInfo, Engine, EngineError, EngineOptions

if TYPE_CHECKING:
    from tpserve.core.metrics import Metrics
    from tpserve.core.request import Event, Request
    from tpserve.core.scheduler import Scheduler

log = logging.getLogger("tpserve.runtime")


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    if os.environ.get("DS_ACCELERATOR") == "cpu":
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def bring_up(cfg: ServeConfig, info: DistInfo) -> tuple[Any, dist.Channel, str, str, list[dict[str, Any]]]:
    """Every rank: join the process group, agree on the engine, load, and gather weight reports."""
    from tpserve import engines

    device = resolve_device(cfg.device)
    if device == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        if "OMP_NUM_THREADS" not in os.environ:  # ranks of one host share its cores
            import torch

            torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, info.local_size)))
    tp_size = cfg.tp_size or info.world_size
    if tp_size != info.world_size:
        raise EngineError(
            f"--tp-size {tp_size} != WORLD_SIZE {info.world_size}: one launch is one tensor-parallel group "
            "(run one launch per replica for data parallelism)"
        )
    channel = dist.init(info, device, cfg.heartbeat_timeout_s)
    options = EngineOptions(
        model_dir=cfg.model_dir,
        dtype=cfg.dtype,
        tp_size=tp_size,
        device=device,
        max_batch_size=cfg.max_batch_size,
        max_request_tokens=cfg.max_prompt_tokens + cfg.max_new_tokens,
        kv_cache_gb=cfg.kv_cache_gb,
        kernel_inject=cfg.kernel_inject,
        tp_grain_size=cfg.tp_grain_size,
        batch_decode=cfg.batch_decode,
        cuda_graphs=cfg.cuda_graphs,
        oneshot_allreduce=cfg.oneshot_allreduce,
        dist=info,
    )
    # rank 0 decides (one answer for all), every rank learns it through an all-gather; a refusal
    # travels too, so every rank stops with the same configuration error (exit 2) instead of the
    # others dying on a closed connection (exit 1)
    choice: list[str] | None = None
    if info.rank == 0:
        try:
            choice = list(engines.select(cfg.engine, options))
        except EngineError as exc:
            choice = ["", str(exc)]
    name, reason = channel.all_gather(choice)[0]
    if not name:
        raise EngineError(reason)
    t0 = time.monotonic()
    engine = engines.create(name, options)
    from tpserve.control.ranks import TestFaultOOM
    from tpserve.engines.stepprofile import StepProfile

    engine.keep_picks = overlaps_steps(cfg, engine)  # the same answer on every rank
    TestFaultOOM.install(engine, info.rank)  # tests only: None unless TPSERVE_TEST_FAULT_OOM is set
    StepProfile.install(engine, info.rank)  # diagnostics only: None unless TPSERVE_PROFILE is set
    report = {"rank": info.rank, "host": info.host, "local_rank": info.local_rank, **engine.weight_report()}
    reports = channel.all_gather(report)
    dist.unlink_own_shm_buffer(info)
    log.info("rank %d: engine %s ready in %.1f s: %s", info.rank, name, time.monotonic() - t0, report)
    return engine, channel, name, reason, reports


def overlaps_steps(cfg: ServeConfig, engine: Engine) -> bool:
    """Asynchronous scheduling on (--async-scheduling: auto = where the engine's steps are)."""
    return cfg.async_scheduling == "on" or (cfg.async_scheduling == "auto" and engine.asynchronous)


def run_worker(cfg: ServeConfig, info: DistInfo) -> int:
    from tpserve.control.ranks import Watchdog, worker_loop

    try:
        engine, channel, _, _, _ = bring_up(cfg, info)
    except EngineError as exc:
        dist.fatal(f"rank {info.rank}: {exc}", 2)
    except Exception as exc:
        dist.fatal(f"rank {info.rank}: start-up failed ({type(exc).__name__}: {exc})", 1)
    _follow_rank0_on_sigterm(info.rank, cfg.drain_timeout_s)
    code = worker_loop(engine, channel, Watchdog(cfg.step_timeout_s))
    logging.shutdown()
    os._exit(code)


def _follow_rank0_on_sigterm(rank: int, drain_timeout_s: float) -> None:
    """A worker's SIGTERM (systemd stops every process of a unit, the launcher forwards it) must not
    break the group while rank 0 drains: the worker keeps running steps until rank 0 broadcasts
    'shutdown', and exits by itself if that does not come within the drain timeout + 10 s."""
    import signal

    def on_term(signum: int, _frame: Any) -> None:
        log.info("rank %d: SIGTERM: following rank 0's drain (at most %.0f s)", rank, drain_timeout_s + 10)
        timer = threading.Timer(
            drain_timeout_s + 10, dist.fatal, (f"rank {rank}: no shutdown after SIGTERM", 0)
        )
        timer.daemon = True
        timer.start()
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    signal.signal(signal.SIGTERM, on_term)


def build_scheduler(
    cfg: ServeConfig,
    info: DistInfo,
    metrics: Metrics,
    decode: Callable[[list[int]], str] | None,
    eos_ids: Iterable[int],
    sink: Callable[[list[tuple[Request, Event]]], None] | None = None,
) -> tuple[Scheduler, str, str, list[dict[str, Any]]]:
    """Rank 0: bring the group up and build the step loop over its engine (both front end modes)."""
    from tpserve.control.ranks import Watchdog
    from tpserve.core.request import deliver
    from tpserve.core.scheduler import Scheduler

    t0 = time.monotonic()
    engine, channel, name, reason, reports = bring_up(cfg, info)
    metrics.load_seconds.set(time.monotonic() - t0)
    if resolve_device(cfg.device) == "cuda":
        problem = metrics.enable_gpu()
        if problem:
            log.warning("%s", problem)
    scheduler = Scheduler(
        engine,
        channel,
        decode,
        eos_ids,
        metrics,
        cfg.max_batch_size,
        cfg.heartbeat_interval_s,
        Watchdog(cfg.step_timeout_s),
        cfg.max_batch_tokens or None,
        sink or deliver,
        overlap=engine.keep_picks,
    )
    return scheduler, name, reason, reports


def run_rank0(cfg: ServeConfig, info: DistInfo) -> int:
    """Rank 0: the engine loop, and the HTTP front end in its own process (tpserve.core.coreproc)
    or, with --no-frontend-process, in this one (uvicorn in the main thread, the loop in a thread)."""
    if cfg.frontend_process:
        from tpserve.core.coreproc import run_core

        return run_core(cfg, info)
    from tpserve.core.service import Service
    from tpserve.frontend import build_app
    from tpserve.frontend.server import serve_http

    service = Service(cfg, info.world_size)

    def engine_thread() -> None:
        try:
            service.load_tokenizer()  # before the ranks sync: after it they wait on the heartbeat clock
            scheduler, name, reason, reports = build_scheduler(
                cfg, info, service.metrics, service.decode, service.eos_ids
            )
            service.ready(scheduler, name, reason, scheduler.describe(), reports)
            dist.on_fatal(scheduler.abort)  # the group must exit: what is in flight gets a 503 first
            log.info(
                "serving %s with %s (%s) on %d rank(s)", cfg.served_model_name, name, reason, len(reports)
            )
        except EngineError as exc:
            dist.fatal(f"rank 0: {exc}", 2)
        except Exception as exc:
            log.exception("start-up failed")
            dist.fatal(f"rank 0: start-up failed ({type(exc).__name__}: {exc})", 1)
        try:
            scheduler.run()
        except Exception as exc:
            log.exception("scheduler failed")
            dist.fatal(f"rank 0: step failed ({type(exc).__name__}: {exc})")

    threading.Thread(target=engine_thread, name="tpserve-engine", daemon=True).start()
    code = serve_http(build_app(service), service, cfg.host, cfg.port)
    logging.shutdown()
    os._exit(code)
