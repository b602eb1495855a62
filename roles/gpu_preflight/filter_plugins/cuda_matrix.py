"""Filters over the CUDA stack matrix (tpserve_cuda_matrix in group_vars/all/cuda_stack.yml):
torch version x variant -> wheel index, minimum NVIDIA driver, CUDA toolkit. Pure functions
(unit-tested in tests/unit/test_cuda_matrix.py); the guard-rails' driver check uses them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in str(version).split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def driver_at_least(driver: str, minimum: str) -> bool:
    """Numeric comparison of NVIDIA driver versions ("550.127.05" >= "525.60.13")."""
    if not minimum:
        return True
    return _version_tuple(driver) >= _version_tuple(minimum)


def cuda_matrix_pairs(matrix: Mapping[str, Mapping[str, Any]], cuda_only: bool = True) -> list[str]:
    """Every supported pair, e.g. "torch 2.13.0+cu126 (driver >= 525.60.13, CUDA toolkit 12.6)"."""
    out: list[str] = []
    for torch in sorted(matrix, key=_version_tuple):
        for variant in sorted(matrix[torch]):
            entry = matrix[torch][variant] or {}
            if variant == "cpu" or not entry.get("min_driver"):
                if not cuda_only:
                    out.append(f"torch {torch}+{variant}")
                continue
            out.append(
                f"torch {torch}+{variant} (driver >= {entry['min_driver']}, "
                f"CUDA toolkit {entry.get('toolkit', '?')})"
            )
    return out


def cuda_matrix_entry(
    matrix: Mapping[str, Mapping[str, Any]], torch: str, variant: str
) -> dict[str, Any]:
    """The row for (torch, variant); ValueError naming the variables and the supported pairs."""
    row = (matrix.get(str(torch)) or {}).get(str(variant))
    if row is None:
        pairs = "; ".join(cuda_matrix_pairs(matrix, cuda_only=False)) or "none"
        raise ValueError(
            f"torch {torch}+{variant} is not in tpserve_cuda_matrix: set tpserve_torch_version "
            f"and tpserve_cuda_variant to a supported pair: {pairs}"
        )
    return dict(row)


def cuda_variants_for_driver(
    matrix: Mapping[str, Mapping[str, Any]], torch: str, driver: str
) -> list[str]:
    """The CUDA variants of `torch` that `driver` can run, newest CUDA first."""
    row = matrix.get(str(torch)) or {}
    ok = [
        v
        for v, e in row.items()
        if v != "cpu" and (e or {}).get("min_driver") and driver_at_least(driver, e["min_driver"])
    ]
    return sorted(ok, key=lambda v: _version_tuple(str(row[v].get("toolkit", "0"))), reverse=True)


def cuda_driver_problems(
    gpus: list[Mapping[str, Any]],
    matrix: Mapping[str, Mapping[str, Any]],
    torch: str,
    variant: str,
) -> list[str]:
    """One message per GPU whose driver is older than the chosen CUDA stack needs (empty = ok).

    `gpus` as parsed by nvidia_smi_gpus (index, name, driver_version). Each message names the
    variables to change, the variants this driver can run and every supported pair.
    """
    try:
        entry = cuda_matrix_entry(matrix, torch, variant)
    except ValueError as exc:
        return [str(exc)]
    minimum = str(entry.get("min_driver") or "")
    if not gpus:
        return ["nvidia-smi lists no GPU"]
    problems: list[str] = []
    pairs = "; ".join(cuda_matrix_pairs(matrix))
    for gpu in gpus:
        label = f"GPU {gpu.get('index', '?')} ({gpu.get('name') or 'unknown'})"
        driver = str(gpu.get("driver_version") or "")
        if not driver:
            problems.append(f"{label}: driver version unknown")
            continue
        if driver_at_least(driver, minimum):
            continue
        usable = cuda_variants_for_driver(matrix, torch, driver)
        hint = (
            f"set tpserve_cuda_variant to {' or '.join(usable)} (runs on this driver), or upgrade "
            f"the driver to >= {minimum}"
            if usable
            else f"upgrade the NVIDIA driver to >= {minimum}"
        )
        problems.append(
            f"{label}: driver {driver} < {minimum}, the minimum for torch {torch}+{variant} "
            f"(tpserve_torch_version={torch}, tpserve_cuda_variant={variant}): {hint}. "
            f"Supported pairs: {pairs}"
        )
    return problems


class FilterModule:
    """Ansible filter plugin entry point."""

    def filters(self) -> dict[str, Any]:
        return {
            "cuda_matrix_pairs": cuda_matrix_pairs,
            "cuda_matrix_entry": cuda_matrix_entry,
            "cuda_variants_for_driver": cuda_variants_for_driver,
            "cuda_driver_problems": cuda_driver_problems,
        }
