#!/usr/bin/env python3
"""Check a node's Python environment against the lock and print one JSON object.

--versions-only: compare installed distribution versions with the lock (fast, no imports).
Otherwise also import the modules named by --import and report torch/DeepSpeed facts
(torch.cuda.device_count(), DeepSpeed's accelerator). Exit code 0 even on mismatch: the
caller (Ansible) asserts on the JSON so that the message can name the node.
"""

from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from importlib import metadata


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(path: str) -> dict[str, str]:
    pins = {}
    with open(path) as handle:
        for raw in handle:
            line = raw.split("#", 1)[0].strip()
            if "==" in line:
                name, version = line.split("==", 1)
                pins[canonical(name)] = version.split(";", 1)[0].strip()
    return pins


def public(version: str) -> str:
    """2.13.0+cpu -> 2.13.0 (a local label is how CPU/CUDA builds of torch differ)."""
    return version.split("+", 1)[0]


def version_mismatches(pins: dict[str, str]) -> dict[str, dict[str, str | None]]:
    bad: dict[str, dict[str, str | None]] = {}
    for name, wanted in sorted(pins.items()):
        try:
            have: str | None = metadata.version(name)
        except metadata.PackageNotFoundError:
            have = None
        if have is None or (public(have) != public(wanted) and have != wanted):
            bad[name] = {"wanted": wanted, "installed": have}
    return bad


def probe_imports(modules: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    versions, errors = {}, {}
    for module in modules:
        try:
            imported = importlib.import_module(module)
            versions[module] = str(getattr(imported, "__version__", "unknown"))
        except Exception as exc:
            errors[module] = f"{type(exc).__name__}: {exc}"
    return versions, errors


def torch_facts() -> dict[str, object]:
    facts: dict[str, object] = {}
    try:
        import torch

        facts["torch_version"] = torch.__version__
        facts["cuda_available"] = bool(torch.cuda.is_available())
        facts["cuda_device_count"] = int(torch.cuda.device_count())
        facts["torch_cuda"] = torch.version.cuda
    except Exception as exc:
        facts["torch_error"] = f"{type(exc).__name__}: {exc}"
    try:
        from deepspeed.accelerator import get_accelerator

        facts["deepspeed_accelerator"] = get_accelerator().device_name()
    except Exception as exc:
        facts["deepspeed_accelerator_error"] = f"{type(exc).__name__}: {exc}"
    return facts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lock", required=True)
    parser.add_argument("--import", dest="imports", action="append", default=[])
    parser.add_argument("--versions-only", action="store_true")
    args = parser.parse_args()

    result: dict[str, object] = {
        "python": ".".join(map(str, sys.version_info[:3])),
        "prefix": sys.prefix,
    }
    result["mismatches"] = version_mismatches(lock_pins(args.lock))
    if not args.versions_only:
        versions, errors = probe_imports(args.imports)
        result.update(imports=versions, import_errors=errors, **torch_facts())
    result["ok"] = not result["mismatches"] and not result.get("import_errors")
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
