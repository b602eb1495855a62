"""Build DeepSpeed's JIT ops once, at provisioning time, instead of on the first request.

    python -m tpserve.tools.prebuild --accelerator cuda     # FastGen's ops for this node's GPU
    python -m tpserve.tools.prebuild --accelerator cpu      # the CPU shm all-reduce op

Prints one JSON line: {"accelerator", "arch", "ops": {name: seconds}, "extensions_dir"}; exits 2
with a reason (which op, the compiler's last lines) when a build fails. Ops land in
TORCH_EXTENSIONS_DIR (the service must use the same one); a second run only loads them (seconds).

TORCH_CUDA_ARCH_LIST is set to the GPU's plain major.minor ("9.0"): DeepSpeed's op builder cannot
parse suffixed values such as "9.0a" that CUDA images preset (FastGen then fails with
"Config ... is not supported by DSPreRMSCUDAModule").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

#: What DeepSpeed's v2 engine (FastGen) loads for dense models (RaggedOps links deepspeed-kernels'
#: libblockedflash). Mixture-of-experts models (mixtral, qwen2_moe) also load InferenceCutlassBuilder.
CUDA_OPS = ("RaggedUtilsBuilder", "RaggedOpsBuilder", "InferenceCoreBuilder")
MOE_OPS = ("InferenceCutlassBuilder",)
CPU_OPS = ("ShareMemCommBuilder",)


def plain_arch(value: str) -> str:
    """'9.0a' -> '9.0', '8.6+PTX' -> '8.6', '8.0;9.0a' -> '8.0;9.0' (DeepSpeed's builder wants digits)."""
    out = []
    for item in value.replace(" ", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        major, _, minor = item.partition(".")
        digits = "".join(ch for ch in minor if ch.isdigit()) or "0"
        out.append(f"{int(major)}.{digits}")
    return ";".join(out)


def cuda_arch() -> str:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device visible (is the NVIDIA driver loaded? nvidia-smi)")
    arches = {"{}.{}".format(*torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())}
    return ";".join(sorted(arches))


def build(accelerator: str, moe: bool = False) -> dict[str, object]:
    if accelerator == "cuda":
        os.environ["TORCH_CUDA_ARCH_LIST"] = plain_arch(os.environ.get("TPSERVE_CUDA_ARCH") or cuda_arch())
        from deepspeed.ops import op_builder

        names = CUDA_OPS + (MOE_OPS if moe else ())
        builders = {n: getattr(op_builder, n) for n in names}
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        from deepspeed.ops.op_builder import cpu as cpu_builders

        names = CPU_OPS
        builders = {n: getattr(cpu_builders, n) for n in names}
    ops: dict[str, float] = {}
    for name in names:
        t0 = time.monotonic()
        builder = builders[name]()
        if not builder.is_compatible(verbose=True):
            raise RuntimeError(f"{name} is not compatible with this node (see the lines above)")
        builder.load(verbose=False)
        ops[name] = round(time.monotonic() - t0, 1)
    return {
        "accelerator": accelerator,
        "arch": os.environ.get("TORCH_CUDA_ARCH_LIST", ""),
        "ops": ops,
        "extensions_dir": os.environ.get("TORCH_EXTENSIONS_DIR", "(torch default)"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tpserve.tools.prebuild", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--accelerator", choices=("cuda", "cpu"), required=True)
    parser.add_argument("--moe", action="store_true", help="also the mixture-of-experts ops (cuda)")
    args = parser.parse_args(argv)
    try:
        result = build(args.accelerator, args.moe)
    except Exception as exc:  # report which op and why; the compiler output is above
        print(f"tpserve.tools.prebuild: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
