"""`tpserve` command line. One process per rank (the DeepSpeed launcher starts them)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from tpserve.config import ServeConfig, api_key_from_env


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tpserve",
        description="Tensor-parallel LLM service. Start with the DeepSpeed launcher, one process per rank; "
        "rank 0 serves HTTP. The API key comes only from the environment variable TPSERVE_API_KEY.",
    )
    p.add_argument("--model", required=True, help="HF model directory (config.json, safetensors, tokenizer)")
    p.add_argument("--served-model-name", default=None, help="name in the API (default: the directory name)")
    p.add_argument("--engine", choices=["auto", "autotp", "fastgen"], default="auto")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (auto: fp32 on CPU)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--tp-size", type=int, default=0, help="tensor-parallel size (default: WORLD_SIZE)")
    p.add_argument("--host", default="0.0.0.0", help="HTTP bind address (rank 0)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-batch-size", type=int, default=8, help="sequences per step")
    p.add_argument("--max-prompt-tokens", type=int, default=2048)
    p.add_argument("--max-new-tokens", type=int, default=512, help="upper bound a request may ask for")
    p.add_argument("--default-max-new-tokens", type=int, default=128, help="when a request does not say")
    p.add_argument("--max-queue", type=int, default=64, help="waiting requests before 429")
    p.add_argument("--request-timeout", type=float, default=120.0, help="seconds per request (then 504)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000)
    p.add_argument(
        "--heartbeat-timeout", type=float, default=30.0, help="seconds before a silent rank is dead"
    )
    p.add_argument("--step-timeout", type=float, default=300.0, help="seconds one step may take (0 = off)")
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=20.0,
        help="on SIGTERM: seconds in-flight requests may still run (then 503); keep it below the "
        "launcher's 30 s grace and systemd's TimeoutStopSec",
    )
    p.add_argument(
        "--stall-timeout",
        type=float,
        default=30.0,
        help="/health says 503 'stalled' when a step runs this long",
    )
    p.add_argument(
        "--kv-cache-gb", type=float, default=0.0, help="fastgen: KV cache per GPU (0 = engine default)"
    )
    p.add_argument(
        "--max-batch-tokens",
        type=int,
        default=0,
        help="tokens per engine step (decodes + prompt chunks): a longer prompt is prefilled over several "
        "steps while running streams keep decoding; 0 = the engine's own (fastgen: its ragged batch "
        "size; autotp: no limit)",
    )
    p.add_argument("--kernel-inject", action="store_true", help="autotp: DeepSpeed kernel injection (opt-in)")
    p.add_argument(
        "--tp-grain-size", type=int, default=0, help="autotp: DeepSpeed tp_grain_size (0 = default)"
    )
    p.add_argument("--no-batch-decode", action="store_true", help="autotp: one forward per sequence per step")
    p.add_argument(
        "--pid-file", default=None, help="rank 0 writes its PID here (for a graceful stop: SIGTERM it)"
    )
    p.add_argument("--log-level", default=os.environ.get("TPSERVE_LOG_LEVEL", "INFO"))
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the launcher's; unused
    return p


def _validate(a: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    if not (Path(a.model) / "config.json").is_file():
        p.error(f"--model {a.model}: no config.json there")
    for name in (
        "max_batch_size",
        "max_prompt_tokens",
        "max_new_tokens",
        "default_max_new_tokens",
        "max_queue",
        "max_body_bytes",
    ):
        if getattr(a, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be ≥ 1")
    if a.max_batch_tokens < 0:
        p.error("--max-batch-tokens must be ≥ 0 (0 = the engine's own budget)")
    for name in ("request_timeout", "heartbeat_timeout", "drain_timeout", "stall_timeout"):
        if getattr(a, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if not 0 < a.port < 65536:
        p.error("--port must be 1..65535")


def config_from_args(argv: list[str] | None = None) -> tuple[ServeConfig, str, str | None]:
    p = build_parser()
    a = p.parse_args(argv)
    _validate(a, p)
    return (
        ServeConfig(
            model_dir=str(Path(a.model).resolve()),
            served_model_name=a.served_model_name or Path(a.model).resolve().name,
            engine=a.engine,
            dtype=a.dtype,
            device=a.device,
            tp_size=a.tp_size,
            host=a.host,
            port=a.port,
            max_batch_size=a.max_batch_size,
            max_prompt_tokens=a.max_prompt_tokens,
            max_new_tokens=a.max_new_tokens,
            default_max_new_tokens=min(a.default_max_new_tokens, a.max_new_tokens),
            max_queue=a.max_queue,
            request_timeout_s=a.request_timeout,
            max_body_bytes=a.max_body_bytes,
            heartbeat_timeout_s=a.heartbeat_timeout,
            step_timeout_s=a.step_timeout,
            drain_timeout_s=a.drain_timeout,
            stall_timeout_s=a.stall_timeout,
            kv_cache_gb=a.kv_cache_gb,
            max_batch_tokens=a.max_batch_tokens,
            kernel_inject=a.kernel_inject,
            tp_grain_size=a.tp_grain_size,
            batch_decode=not a.no_batch_decode,
            api_key=api_key_from_env(),
        ),
        a.log_level,
        a.pid_file,
    )


def main(argv: list[str] | None = None) -> int:
    cfg, level, pid_file = config_from_args(argv)
    from tpserve.dist import dist_info_from_env

    info = dist_info_from_env()
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s rank{info.rank} %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from tpserve.runtime import run_rank0, run_worker

    if info.rank == 0:
        if pid_file:
            Path(pid_file).write_text(f"{os.getpid()}\n")
        return run_rank0(cfg, info)
    return run_worker(cfg, info)
