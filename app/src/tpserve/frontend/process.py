"""The front end process: `python -m tpserve.frontend.process`, started by rank 0 (the engine core,
tpserve.core.coreproc) with its settings as one JSON line on stdin. It runs uvicorn + FastAPI, the
tokenizer, detokenization and SSE, and reaches the engine through tpserve.frontend.core_client.

It never outlives the engine core: PR_SET_PDEATHSIG (SIGKILL when rank 0's process dies) and, as a
second line, a thread that waits for EOF on stdin (the core holds the pipe's other end).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import threading

PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the parent dies; exits now if it already has (it died before the prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the stdin watch alone
        pass
    if os.getppid() != parent:
        os._exit(1)


def _watch_stdin() -> None:
    sys.stdin.buffer.read()  # returns at EOF: the engine core's end of the pipe is closed
    logging.getLogger("tpserve.frontend.process").critical("the engine core is gone; exiting")
    sys.stderr.flush()
    os._exit(1)


def main() -> int:
    spec = json.loads(sys.stdin.buffer.readline())
    _die_with_parent(int(spec["parent"]))
    threading.Thread(target=_watch_stdin, name="tpserve-core-watch", daemon=True).start()
    logging.basicConfig(
        level=spec["log_level"],
        format="%(asctime)s rank0 frontend %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from tpserve.config import ServeConfig
    from tpserve.core.service import Service
    from tpserve.frontend import build_app
    from tpserve.frontend.core_client import CoreClient
    from tpserve.frontend.server import serve_http

    cfg = ServeConfig(**spec["config"])
    service = Service(cfg, int(spec["world_size"]))
    client = CoreClient(service, spec["core"], spec["frontend"], spec["dir"], int(spec["parent"]))
    service.core_metrics = client.core_metrics
    code = serve_http(build_app(service), service, cfg.host, cfg.port, background=client.run)
    logging.shutdown()
    os._exit(code)


if __name__ == "__main__":
    raise SystemExit(main())
