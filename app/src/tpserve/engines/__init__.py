"""Engine registry: engines are imported lazily by name; `auto` picks one and says why.

    name, reason = select("auto", options)
    engine = create(name, options)

Engine modules live in tpserve.engines.<name> and expose `create_engine(options) -> Engine`.
"""

from __future__ import annotations

import importlib
import importlib.util

from tpserve.engines import support
from tpserve.engines.base import DistInfo, Engine, EngineError, EngineOptions, load_config

ENGINES: dict[str, str] = {
    "autotp": "tpserve.engines.autotp",  # DeepSpeed v1 init_inference AutoTP: CPU + CUDA, cross-node
    "fastgen": "tpserve.engines.fastgen",  # DeepSpeed v2 ragged engine: CUDA CC>=8.0, in or across nodes
}


__all__ = [
    "ENGINES",
    "DistInfo",
    "Engine",
    "EngineError",
    "EngineOptions",
    "create",
    "fastgen_blocker",
    "select",
]


def _module_available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def fastgen_blocker(options: EngineOptions) -> str | None:
    """None when FastGen can serve this job, else the first reason it cannot."""
    import torch

    if options.device != "cuda" or not torch.cuda.is_available():
        return "no CUDA device"
    static = support.blocker(
        "fastgen", load_config(options.model_dir), "cuda", torch.cuda.get_device_capability()
    )
    if static:
        return static
    if options.dist.local_size > torch.cuda.device_count():
        return f"{options.dist.local_size} ranks on this host but {torch.cuda.device_count()} GPU(s)"
    if not _module_available(ENGINES["fastgen"]):
        return "tpserve.engines.fastgen is not installed"
    if not _module_available("deepspeed.inference.v2"):
        return "deepspeed.inference.v2 is not importable"
    return None


def select(name: str, options: EngineOptions) -> tuple[str, str]:
    """Resolve 'auto' | 'autotp' | 'fastgen' to an engine name plus a human reason for /health."""
    if name == "auto":
        blocker = fastgen_blocker(options)
        if blocker is None:
            hosts = options.dist.world_size // max(1, options.dist.local_size)
            where = f"TP={options.tp_size} across {hosts} hosts (NCCL)" if hosts > 1 else "TP within one host"
            return "fastgen", f"auto: CUDA CC>=8.0, supported architecture, {where}"
        return "autotp", f"auto: autotp because {blocker}"
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; choose auto or one of {sorted(ENGINES)}")
    if name == "fastgen":
        blocker = fastgen_blocker(options)
        if blocker is not None:
            raise EngineError(f"engine fastgen was asked for but cannot run: {blocker}")
    return name, f"{name}: chosen explicitly"


def create(name: str, options: EngineOptions) -> Engine:
    """Import tpserve.engines.<name> lazily and build its engine on this rank."""
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r}; choose one of {sorted(ENGINES)}")
    module = importlib.import_module(ENGINES[name])
    engine = module.create_engine(options)
    if not isinstance(engine, Engine):
        raise EngineError(f"{ENGINES[name]}.create_engine returned {type(engine).__name__}, not an Engine")
    return engine
