"""`tpserve` command line, generated from tpserve.config.ServeConfig (the one owner of every
setting's default, bounds and help). One process per rank (the DeepSpeed launcher starts them)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from pathlib import Path

from tpserve.config import ServeConfig, api_key_from_env


def flag_of(field: dataclasses.Field) -> str:
    """--request-timeout for request_timeout_s; a bool that defaults to True is --no-<name>."""
    name = field.metadata.get("flag") or "--" + field.name.removesuffix("_s").replace("_", "-")
    if field.type in ("bool", bool) and field.default is True:
        return "--no-" + name.removeprefix("--")
    return name


def cli_fields() -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(ServeConfig) if f.metadata.get("cli", True)]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tpserve",
        description="Tensor-parallel LLM service. Start with the DeepSpeed launcher, one process per rank; "
        "rank 0 serves HTTP. The API key comes only from the environment variable TPSERVE_API_KEY.",
    )
    for f in cli_fields():
        meta, flag = f.metadata, flag_of(f)
        if f.type in ("bool", bool):
            action = "store_false" if f.default is True else "store_true"
            p.add_argument(flag, dest=f.name, action=action, default=f.default, help=meta["help"])
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        help_ = f"{meta['help']} (default: {f.default})" if f.default not in ("", None) else meta["help"]
        p.add_argument(
            flag, dest=f.name, type=kind, default=f.default, choices=meta.get("choices"), help=help_,
        )  # fmt: skip
    p.add_argument(
        "--pid-file", default=None, help="rank 0 writes its PID here (for a graceful stop: SIGTERM it)"
    )
    p.add_argument("--log-level", default=os.environ.get("TPSERVE_LOG_LEVEL", "INFO"))
    p.add_argument(
        "--serving-properties",
        metavar="FILE",
        help="DJLServing serving.properties (engine, option.model_id, option.tensor_parallel_degree, "
        "option.data_type, option.max_new_tokens, option.model_loading_timeout); flags given too win",
    )
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # the launcher's; unused
    return p


def _validate(a: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    if not (Path(a.model_dir) / "config.json").is_file():
        p.error(f"--model {a.model_dir}: no config.json there")
    for f in cli_fields():
        value, meta, flag = getattr(a, f.name), f.metadata, flag_of(f)
        if meta.get("min") is not None and value < meta["min"]:
            p.error(f"{flag} must be ≥ {meta['min']:g} (got {value})")
        if meta.get("gt") is not None and value <= meta["gt"]:
            p.error(f"{flag} must be > {meta['gt']:g} (got {value})")
        if meta.get("max") is not None and value > meta["max"]:
            p.error(f"{flag} must be ≤ {meta['max']:g} (got {value})")


def _with_properties(argv: list[str], p: argparse.ArgumentParser) -> list[str]:
    """`--serving-properties FILE` stands for the flags the file sets, placed first (so the
    command line's own flags win)."""
    from tpserve.frontend.serving_properties import PropertiesError, to_args

    if "--serving-properties" not in argv:
        return argv
    i = argv.index("--serving-properties")
    if i + 1 >= len(argv):
        p.error("--serving-properties needs a file")
    try:
        file_args = to_args(argv[i + 1])
    except (OSError, PropertiesError) as exc:
        p.error(f"--serving-properties {argv[i + 1]}: {exc}")
    return file_args + argv[:i] + argv[i + 2 :]


def config_from_args(argv: list[str] | None = None) -> tuple[ServeConfig, str, str | None]:
    p = build_parser()
    argv = _with_properties(list(sys.argv[1:] if argv is None else argv), p)
    if not any(a == "--model" or a.startswith("--model=") for a in argv):
        p.error("--model (or option.model_id in --serving-properties) is required")
    a = p.parse_args(argv)
    _validate(a, p)
    values = {f.name: getattr(a, f.name) for f in cli_fields()}
    model_dir = Path(a.model_dir).resolve()
    values.update(
        model_dir=str(model_dir),
        served_model_name=a.served_model_name or model_dir.name,
        default_max_new_tokens=min(a.default_max_new_tokens, a.max_new_tokens),
        api_key=api_key_from_env(),
    )
    return ServeConfig(**values), a.log_level, a.pid_file


def main(argv: list[str] | None = None) -> int:
    cfg, level, pid_file = config_from_args(argv)
    from tpserve.control.dist import dist_info_from_env

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
