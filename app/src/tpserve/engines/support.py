"""The one support table: which engine can serve which model where, and why not.

Static rules only (no GPU, no import of DeepSpeed): the model's architecture, the accelerator and
the GPU's compute capability. `tpserve.engines.select` adds the runtime checks (CUDA present, GPUs per
host, modules importable); `python -m tpserve.tools.plan` answers the same question for serve.yml before any
process starts, so Ansible never keeps its own copy of these lists.
"""

from __future__ import annotations

#: config.json "architectures" DeepSpeed v1 AutoTP shards (verified: ../shared/notes/deepspeed.md)
AUTOTP_ARCHITECTURES = frozenset({
    "LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "GemmaForCausalLM",
    "Gemma2ForCausalLM", "GPTNeoXForCausalLM", "OPTForCausalLM", "FalconForCausalLM", "MixtralForCausalLM",
    "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM",
})  # fmt: skip
#: config.json "model_type"s DeepSpeed 0.19's inference v2 (FastGen) has policies for
FASTGEN_MODEL_TYPES = frozenset(
    {"opt", "llama", "mistral", "mixtral", "falcon", "phi", "phi3", "qwen", "qwen2", "qwen2_moe"}
)
#: compute capability deepspeed-kernels ships binaries for (Ampere and newer)
FASTGEN_MIN_CC = (8, 0)
ENGINE_NAMES = ("autotp", "fastgen")


def architecture(config: dict) -> str:
    return str((config.get("architectures") or ["unknown"])[0])


def blocker(engine: str, config: dict, accelerator: str, cc: tuple[int, int] | None) -> str | None:
    """Why `engine` cannot serve this model on this accelerator (None: it can, as far as static
    facts tell). cc None: not known (then only a GPU at start-up can tell)."""
    if engine == "autotp":
        arch = architecture(config)
        if arch not in AUTOTP_ARCHITECTURES:
            return (
                f"DeepSpeed AutoTP cannot shard {arch} (it handles {', '.join(sorted(AUTOTP_ARCHITECTURES))})"
            )
        return None
    if engine == "fastgen":
        if accelerator != "cuda":
            return "no CUDA device (FastGen is CUDA-only)"
        if cc is not None and cc < FASTGEN_MIN_CC:
            return f"GPU compute capability {cc[0]}.{cc[1]} < 8.0 (FastGen kernels need Ampere or newer)"
        model_type = str(config.get("model_type", ""))
        if model_type not in FASTGEN_MODEL_TYPES:
            known = ", ".join(sorted(FASTGEN_MODEL_TYPES))
            return f"model_type {model_type!r} has no FastGen implementation ({known})"
        return None
    return f"unknown engine {engine!r}; choose auto or one of {list(ENGINE_NAMES)}"


def choose(
    asked: str, config: dict, accelerator: str, cc: tuple[int, int] | None
) -> tuple[str, str, str | None]:
    """(engine, reason, problem): `auto` -> fastgen where it can run, else autotp; an explicit engine
    that cannot run, or no engine at all, gives a problem (what to change)."""
    if asked == "auto":
        why_not = blocker("fastgen", config, accelerator, cc)
        if why_not is None:
            return "fastgen", "auto: CUDA CC>=8.0 and a FastGen architecture", None
        problem = blocker("autotp", config, accelerator, cc)
        return "autotp", f"auto: autotp because {why_not}", problem
    problem = blocker(asked, config, accelerator, cc)
    return (
        asked,
        f"{asked}: chosen explicitly",
        (f"tpserve_engine={asked} cannot run: {problem}" if problem else None),
    )
