"""Server settings (from the CLI; the API key only from the environment)."""

from __future__ import annotations

import dataclasses
import os

API_KEY_ENV = "TPSERVE_API_KEY"


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    model_dir: str
    served_model_name: str
    engine: str = "auto"
    dtype: str = "auto"
    device: str = "auto"
    tp_size: int = 0  # 0 = WORLD_SIZE
    host: str = "0.0.0.0"
    port: int = 8000
    max_batch_size: int = 8
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 512
    default_max_new_tokens: int = 128
    max_queue: int = 64
    request_timeout_s: float = 120.0
    max_body_bytes: int = 1_000_000
    heartbeat_timeout_s: float = 30.0
    step_timeout_s: float = 300.0
    #: on SIGTERM: in-flight work may finish for this long, then what is left ends with a 503
    drain_timeout_s: float = 20.0
    #: /health turns 503 ("stalled") when one step has run this long (a hung peer, a partition)
    stall_timeout_s: float = 30.0
    kv_cache_gb: float = 0.0
    max_batch_tokens: int = 0  # tokens per engine step; 0 = the engine's own budget
    kernel_inject: bool = False
    tp_grain_size: int = 0
    batch_decode: bool = True
    api_key: str | None = dataclasses.field(default=None, repr=False)

    @property
    def heartbeat_interval_s(self) -> float:
        return max(0.5, min(5.0, self.heartbeat_timeout_s / 6))


def api_key_from_env() -> str | None:
    key = os.environ.get(API_KEY_ENV, "").strip()
    return key or None
