"""Runs last (file name): SIGTERM to rank 0 of the shared server drains in-flight work, exits 0."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from conftest import LaunchedServer, remove_shm_buffers

pytestmark = pytest.mark.slow


def test_sigterm_drains_in_flight_then_all_ranks_exit_zero(
    server: LaunchedServer, auth: dict[str, str]
) -> None:
    result: dict[str, httpx.Response] = {}

    def long_request() -> None:
        result["r"] = httpx.post(
            server.base_url + "/generate",
            headers=auth,
            timeout=60,
            json={"prompt": "drain me", "max_new_tokens": 200},
        )

    worker = threading.Thread(target=long_request)
    worker.start()
    deadline = time.monotonic() + 10
    while httpx.get(server.base_url + "/health", timeout=5).json()["in_flight"] == 0:
        assert time.monotonic() < deadline, "request never started"
        time.sleep(0.02)
    rank0 = server.rank_pid(0)
    pid_file = next(
        arg for prev, arg in zip(server.args, server.args[1:], strict=False) if prev == "--pid-file"
    )
    assert int(Path(pid_file).read_text()) == rank0  # what a service manager signals for a graceful stop
    os.kill(rank0, signal.SIGTERM)
    time.sleep(0.2)
    try:  # while draining: new work is refused with 503 and a reason
        r = httpx.post(server.base_url + "/generate", headers=auth, json={"prompt": "late"}, timeout=5)
        assert r.status_code == 503 and "draining" in r.json()["error"]["message"]
    except httpx.ConnectError:
        pass  # the in-flight request already finished and the server is gone: also correct
    worker.join(timeout=60)
    assert result["r"].status_code == 200, result["r"].text
    assert result["r"].json()["usage"]["completion_tokens"] >= 1
    code = server.proc.wait(timeout=30)
    assert code == 0, server.log_tail()
    assert remove_shm_buffers(server.master_port) == []
