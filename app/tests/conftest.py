"""Shared fixtures: one synthetic model per session, real DeepSpeed launches of `tpserve` on CPU.

No mocks: servers are started with the real DeepSpeed launcher (`python -m deepspeed.launcher.runner
--num_gpus N`, DS_ACCELERATOR=cpu) and talked to over loopback HTTP.
"""

from __future__ import annotations

import contextlib
import glob
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

# This checkout's sources, not whatever an editable install points at (a git worktree, a snapshot):
# for the imports here and for every server the tests launch.
SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)

API_KEY = "test-key-123"  # passed to the server only through TPSERVE_API_KEY
START_TIMEOUT_S = float(os.environ.get("TPSERVE_TEST_START_TIMEOUT", "300"))  # first run JIT-builds shm op


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


EXTENSIONS_DIR = Path(
    os.environ.get("TORCH_EXTENSIONS_DIR", Path.home() / ".cache" / "tpserve" / "torch_extensions")
)
STALE_BATON_S = 600  # DeepSpeed's shm op builds in well under a minute here


def pytest_sessionstart(session: pytest.Session) -> None:
    """A build killed mid-way (a cancelled run) leaves torch's FileBaton `lock` behind, and every later
    JIT build of the shm op waits on it forever (each server start hangs in init_distributed): one
    older than any real build is removed, and said so."""
    for lock in EXTENSIONS_DIR.glob("*/lock"):
        with contextlib.suppress(OSError):
            age = time.time() - lock.stat().st_mtime
            if age > STALE_BATON_S:
                lock.unlink()
                print(f"conftest: removed a stale torch extension build lock {lock} ({age / 60:.0f} min old)")


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["DS_ACCELERATOR"] = "cpu"
    env.setdefault("TORCH_EXTENSIONS_DIR", str(EXTENSIONS_DIR))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.setdefault("TPSERVE_WORKER_STATS", "100")  # rank 1 logs its step phases (test_server checks)
    env.pop("TPSERVE_API_KEY", None)
    return env


class LaunchedServer:
    """`python -m deepspeed.launcher.runner --num_gpus N --module tpserve ...` in its own session."""

    def __init__(
        self,
        model_dir: Path,
        log_path: Path,
        ranks: int = 2,
        api_key: str | None = None,
        extra: tuple[str, ...] = (),
        torchrun_local_size: int | None = None,
        env_extra: dict[str, str] | None = None,
    ) -> None:
        self.port = free_port()
        self.master_port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        env = server_env()
        if api_key:
            env["TPSERVE_API_KEY"] = api_key
        env.update(env_extra or {})
        if torchrun_local_size is None:
            launcher = [
                sys.executable,
                "-m",
                "deepspeed.launcher.runner",
                "--num_gpus",
                str(ranks),
                "--master_port",
                str(self.master_port),
                "--module",
                "tpserve",
            ]
        else:  # torchrun, with LOCAL_SIZE as given (1: ranks behave as if each were on its own host)
            env["LOCAL_SIZE"] = str(torchrun_local_size)
            launcher = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nproc_per_node",
                str(ranks),
                "--master_addr",
                "127.0.0.1",
                "--master_port",
                str(self.master_port),
                "-m",
                "tpserve",
            ]
        cmd = [
            *launcher,
            "--model", str(model_dir), "--served-model-name", "tiny",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "float32", *extra,
        ]  # fmt: skip
        self.args = cmd
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> dict:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                r = httpx.get(self.base_url + "/health", timeout=2)
                if r.status_code == 200 and r.json()["status"] == "ok":
                    return r.json()
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready in {timeout_s} s:\n{self.log_tail()}")

    def rank_pid(self, rank: int) -> int:
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "tpserve" in child.cmdline() and child.environ().get("RANK") == str(rank):
                    return child.pid
        raise LookupError(f"no process for rank {rank}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()


def remove_shm_buffers(master_port: int) -> list[str]:
    """DeepSpeed's leaked CPU all-reduce buffers of one launch (tpserve unlinks its own at start)."""
    pattern = f"/dev/shm/deepspeed_allreduce_buffer_{os.getuid()}_*_{master_port}_*"
    leftovers = glob.glob(pattern)
    for path in leftovers:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return leftovers


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tpserve.tools.synthetic import build

    return build(tmp_path_factory.mktemp("model") / "tiny")


@contextlib.contextmanager
def launched(model_dir: Path, log_path: Path, **kwargs: object) -> Iterator[LaunchedServer]:
    server = LaunchedServer(model_dir, log_path, **kwargs)  # type: ignore[arg-type]
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
        remove_shm_buffers(server.master_port)


#: the shared server profiles its steps 3..10 on every rank (TPSERVE_PROFILE; test_server checks)
PROFILED_STEPS = (3, 8)

#: the shared server's limits (test_async_scheduling starts its twin with the synchronous loop)
SHARED_SERVER_ARGS = (
    "--max-prompt-tokens", "256", "--max-new-tokens", "256", "--max-body-bytes", "65536",
    "--max-batch-size", "16",
    "--max-batch-tokens", "24",  # small: prompts of the tests are prefilled over several steps
    "--max-queue", "64", "--request-timeout", "60",
)  # fmt: skip


@pytest.fixture(scope="session")
def server(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LaunchedServer]:
    """The shared live TP=2 server (API key on, small limits so the limit paths are cheap to hit;
    24 tokens per step, so every chat prompt is prefilled in chunks over several steps; asynchronous
    scheduling on, which CPU engines leave off by default: every test here also checks that rank 1
    resolves the previous step's picks on its own, the other launches keep the synchronous loop)."""
    logs = tmp_path_factory.mktemp("logs")
    log_path, pid_file = logs / "server.log", logs / "rank0.pid"
    extra = (*SHARED_SERVER_ARGS, "--pid-file", str(pid_file), "--async-scheduling", "on")
    profile = {"TPSERVE_PROFILE": f"{PROFILED_STEPS[0]}:{PROFILED_STEPS[1]}:{logs / 'profile'}"}
    with launched(model_dir, log_path, api_key=API_KEY, extra=extra, env_extra=profile) as srv:
        srv.profile_dir = logs / "profile"  # type: ignore[attr-defined]
        yield srv


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}
