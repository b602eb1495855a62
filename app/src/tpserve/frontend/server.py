"""Rank 0's HTTP server: uvicorn in the main thread's event loop (of rank 0's process, or of the
front end process: tpserve.frontend.process), with our own signal handling.

SIGTERM/SIGINT (first): status 'draining' → new requests get 503 + Retry-After, queued and running
ones finish (for at most --drain-timeout, then they end with a 503), the scheduler broadcasts
'shutdown' to every rank, then uvicorn stops and the process exits 0. Under systemd the whole unit
gets SIGTERM and the DeepSpeed launcher forwards one more: further SIGTERMs are ignored while
draining; a second SIGINT (Ctrl-C at a terminal) exits at once (code 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable, Coroutine, Generator
from typing import Any

import uvicorn
from fastapi import FastAPI

from tpserve.control.dist import fatal
from tpserve.core.service import Service

log = logging.getLogger("tpserve.frontend.server")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # signals are ours (see serve_http)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop when installed (in-process, the event loop shares rank 0's GIL with the engine thread:
    every microsecond it spends per streamed token slows the next step's kernel launches)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve_http(
    app: FastAPI,
    service: Service,
    host: str,
    port: int,
    background: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> int:
    """Serve until the scheduler stopped (drained); `background`: a task of the event loop that
    must not end while serving (the front end process's link to the engine core)."""
    # http="auto": httptools when installed (cheaper per SSE chunk than h11)
    config = uvicorn.Config(
        app, host=host, port=port, log_level="info", access_log=False, timeout_graceful_shutdown=5
    )
    server = _Server(config)
    signals_seen: list[int] = []

    def on_signal(signum: int) -> None:
        signals_seen.append(signum)
        if len(signals_seen) > 1:
            if signum == signal.SIGTERM:  # systemd's and the launcher's: the drain goes on
                log.info("SIGTERM again: already draining, ignored")
                return
            fatal(f"second signal {signal.Signals(signum).name}: exiting without draining", 1)
        if service.scheduler is None:
            fatal(f"{signal.Signals(signum).name} while loading: exiting", 1)
        log.info("%s: draining (%d in flight)", signal.Signals(signum).name, service.scheduler.in_flight())
        service.begin_drain()

    async def stop_when_scheduler_stops() -> None:
        while service.scheduler is None or not service.scheduler.stopped.is_set():
            await asyncio.sleep(0.2)
        log.info("all ranks told to shut down; stopping HTTP")
        server.should_exit = True

    async def run_background() -> None:
        assert background is not None
        try:
            await background()
        except Exception as exc:
            log.exception("the front end's link to the engine core failed")
            fatal(f"front end: link to the engine core failed ({type(exc).__name__}: {exc})", 1)
        if not (service.scheduler is not None and service.scheduler.stopped.is_set()):
            fatal("front end: link to the engine core ended", 1)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        tasks = [asyncio.create_task(stop_when_scheduler_stops())]
        if background is not None:
            tasks.append(asyncio.create_task(run_background()))
        try:
            await server.serve()
        finally:
            for task in tasks:
                task.cancel()

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(main())
    except SystemExit as exc:  # uvicorn exits this way when it cannot bind
        fatal(f"HTTP server failed to start on {host}:{port} (exit {exc.code})", 1)
    if service.scheduler is None or not service.scheduler.stopped.is_set():
        fatal("HTTP server stopped unexpectedly", 1)
    return 0
