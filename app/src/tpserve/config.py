"""Server settings: the ONE place their names, defaults, limits and help live.

The command line (tpserve.cli) is generated from these fields; Ansible passes only what an
inventory sets, so a default changed here is the default everywhere. The API key is not a flag:
it comes only from the environment (TPSERVE_API_KEY).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

API_KEY_ENV = "TPSERVE_API_KEY"


def setting(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: tuple[str, ...] | None = None,
    min: float | None = None,
    gt: float | None = None,
    max: float | None = None,
) -> Any:
    """A ServeConfig field with what the CLI needs: help, flag (default --name-with-dashes, no _s),
    choices and bounds (min: >=, gt: >, max: <=)."""
    meta = {"help": help, "flag": flag, "choices": choices, "min": min, "gt": gt, "max": max}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    model_dir: str = setting("", "HF model directory (config.json, safetensors, tokenizer)", flag="--model")
    served_model_name: str = setting("", "name in the API (default: the directory name)")
    engine: str = setting("auto", "engine (auto: fastgen where it can run, else autotp)",
                          choices=("auto", "autotp", "fastgen"))  # fmt: skip
    dtype: str = setting("auto", "weights dtype (auto: fp32 on CPU, the model's on GPU)",
                         choices=("auto", "float32", "bfloat16", "float16"))  # fmt: skip
    device: str = setting("auto", "where the engine runs", choices=("auto", "cpu", "cuda"))
    tp_size: int = setting(0, "tensor-parallel size (0: WORLD_SIZE)", min=0)
    host: str = setting("0.0.0.0", "HTTP bind address (rank 0)")
    port: int = setting(8000, "HTTP port (rank 0)", min=1, max=65535)
    max_batch_size: int = setting(8, "sequences per step", min=1)
    max_prompt_tokens: int = setting(2048, "longest prompt in tokens", min=1)
    max_new_tokens: int = setting(512, "upper bound a request may ask for", min=1)
    default_max_new_tokens: int = setting(128, "when an OpenAI request does not say (/generate: 256)", min=1)
    max_queue: int = setting(64, "waiting requests before 429", min=1)
    request_timeout_s: float = setting(120.0, "seconds per request (then 504)", gt=0)
    max_body_bytes: int = setting(1_000_000, "largest request body (then 413)", min=1)
    heartbeat_timeout_s: float = setting(30.0, "seconds before a silent rank is dead", gt=0)
    step_timeout_s: float = setting(
        33.0,
        "seconds one step may take before the rank exits (0: off): a partitioned peer blocks a step in a "
        "collective; /health says 503 at --stall-timeout, then the group exits and systemd restarts it "
        "(lab partition scenario: the in-flight stream ended 33.6 s after the DROP; with 300 s it waited "
        "for the request timeout). Chunked prefill keeps steps short; raise it for very slow CPU models",
        min=0,
    )
    drain_timeout_s: float = setting(
        20.0,
        "on SIGTERM: seconds in-flight requests may still run (then 503); below the launcher's 30 s grace "
        "and systemd's TimeoutStopSec",
        gt=0,
    )
    stall_timeout_s: float = setting(
        20.0,
        "/health says 503 'stalled' when a step runs this long, or the other ranks have not answered for "
        "this long; keep it below --heartbeat-timeout and --step-timeout, at which the group exits (with 30 "
        "s, the heartbeat timeout, a partitioned step's control timeout took the group down 30.1 s after a "
        "lab DROP before /health had said 503)",
        gt=0,
    )
    kv_cache_gb: float = setting(
        0.0, "fastgen: KV cache per GPU in GiB (0: what weights + headroom leave)", min=0
    )
    max_batch_tokens: int = setting(
        0,
        "tokens per engine step (decodes + prompt chunks): a longer prompt is prefilled over several steps "
        "while running streams keep decoding; 0: the engine's own (fastgen: its ragged batch size; autotp: "
        "no limit)",
        min=0,
    )
    kernel_inject: bool = setting(False, "autotp: DeepSpeed kernel injection (opt-in)")
    tp_grain_size: int = setting(0, "autotp: DeepSpeed tp_grain_size (0: DeepSpeed's default)", min=0)
    batch_decode: bool = setting(True, "autotp: slot KV cache, one decode forward a step (off: per sequence)")
    cuda_graphs: bool = setting(
        True, "CUDA: replay decode steps as CUDA graphs, one per batch bucket (--no-cuda-graphs: eager)"
    )
    oneshot_allreduce: bool = setting(
        True, "CUDA, TP inside one host: small all-reduces one-shot via symmetric memory (off: NCCL)"
    )
    async_scheduling: str = setting(
        "auto",
        "rank 0 launches a step before the previous step's tokens reach its host (they go from device "
        "to device; sampled rows are sampled on rank 0's device, then shared); auto: where the engine's "
        "steps run asynchronously (fastgen); on: any engine (CPU: correct, no gain); off: every step "
        "waits for its tokens",
        choices=("auto", "on", "off"),
    )
    frontend_process: bool = setting(
        True,
        "rank 0: HTTP, tokenization, detokenization and SSE in a child process of their own, linked to the "
        "engine loop by ZeroMQ IPC (the loop keeps its interpreter's GIL); --no-frontend-process: all in "
        "rank 0's process (uvicorn in its main thread, the loop in a thread)",
    )
    api_key: str | None = dataclasses.field(default=None, repr=False, metadata={"cli": False})

    @property
    def heartbeat_interval_s(self) -> float:
        return max(0.5, min(5.0, self.heartbeat_timeout_s / 6))


def api_key_from_env() -> str | None:
    key = os.environ.get(API_KEY_ENV, "").strip()
    return key or None
