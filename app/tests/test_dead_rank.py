"""Failure handling on a real TP=2 launch: timeouts, a full queue, and a rank killed with SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import LaunchedServer, remove_shm_buffers

pytestmark = pytest.mark.slow


def test_timeout_queue_full_then_dead_rank_exits_nonzero(model_dir: Path, tmp_path: Path) -> None:
    extra = (
        "--max-batch-size",
        "1",
        "--max-queue",
        "1",
        "--request-timeout",
        "2",
        "--max-new-tokens",
        "3000",
        "--heartbeat-timeout",
        "10",
    )
    srv = LaunchedServer(model_dir, tmp_path / "server.log", extra=extra)
    try:
        srv.wait_ready()
        url = srv.base_url

        # a request that cannot finish within --request-timeout → 504 with a reason
        # (ignore_eos: on a fast, idle machine the random model may hit EOS before the timeout)
        long = {"max_new_tokens": 3000, "ignore_eos": True}
        r = httpx.post(url + "/generate", json={"prompt": "long", **long}, timeout=30)
        assert r.status_code == 504, r.text
        assert "did not finish within 2" in r.json()["error"]["message"]

        # batch 1, queue 1: a burst gets 429 + Retry-After for what does not fit
        async def burst() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as c:
                return list(
                    await asyncio.gather(
                        *(c.post(url + "/generate", json={"prompt": f"p{i}", **long}) for i in range(6))
                    )
                )

        statuses = [(x.status_code, x.headers.get("retry-after"), x.text) for x in asyncio.run(burst())]
        rejected = [s for s in statuses if s[0] == 429]
        assert rejected, statuses
        assert all(s[1] and "queue is full" in s[2] for s in rejected)
        assert {s[0] for s in statuses} <= {429, 504}

        # SIGKILL rank 1: every surviving process and the launcher exit non-zero within 30 s
        rank0 = psutil.Process(srv.rank_pid(0))
        t0 = time.monotonic()
        os.kill(srv.rank_pid(1), signal.SIGKILL)
        code = srv.proc.wait(timeout=30)
        took = time.monotonic() - t0
        print(f"launcher exited {code} {took:.1f} s after rank 1 was killed")
        assert code != 0
        assert not rank0.is_running() or rank0.status() == psutil.STATUS_ZOMBIE
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/health", timeout=2)
    finally:
        srv.stop()
        assert remove_shm_buffers(srv.master_port) == []  # tpserve unlinked its own buffers at start-up


def test_a_configuration_that_cannot_work_exits_2(model_dir: Path, tmp_path: Path) -> None:
    """Exit 2 = do not restart (the unit's RestartPreventExitStatus=2): here fastgen on a CPU host."""
    from conftest import LaunchedServer, remove_shm_buffers

    srv = LaunchedServer(model_dir, tmp_path / "cfg.log", extra=("--engine", "fastgen"))
    try:
        code = srv.proc.wait(timeout=120)
    finally:
        srv.stop()
        remove_shm_buffers(srv.master_port)  # the ranks exit before unlinking DeepSpeed's buffers
    assert code == 2, srv.log_tail()
    assert "engine fastgen was asked for but cannot run" in srv.log_path.read_text(errors="replace")


def test_oneshot_like_the_reference_app_py(model_dir: Path, tmp_path: Path) -> None:
    """`deepspeed --num_gpus 2 --module tpserve.tools.oneshot --model DIR`: both ranks load and run every
    step, rank 0 prints the prompt, the response and the time, every process exits 0."""
    import subprocess
    import sys

    from conftest import free_port, remove_shm_buffers, server_env

    port = free_port()
    cmd = [
        sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "2", "--master_port", str(port),
        "--module", "tpserve.tools.oneshot", "--model", str(model_dir), "--prompt", "Hello there",
        "--max-new-tokens", "12",
    ]  # fmt: skip
    try:
        proc = subprocess.run(cmd, env=server_env(), capture_output=True, text=True, timeout=240, check=False)
    finally:
        remove_shm_buffers(port)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Prompt: Hello there" in out and "Response: " in out, out[-3000:]
    assert "Generation time: " in out and ("(12 tokens, length)" in out or "stop)" in out), out[-3000:]
    assert "2 rank(s)" in out, out[-3000:]  # and the launcher exits 0 only when both ranks did
