"""Filters for gpu_preflight: parse `nvidia-smi --query-gpu ... --format=csv,noheader,nounits`
and judge the GPUs against the cluster's needs. Pure functions (unit-tested in tests/unit/)."""

from __future__ import annotations

import csv
import io
from typing import Any

# The query the role runs; the parser maps columns by this order.
QUERY_FIELDS: tuple[str, ...] = (
    "index",
    "name",
    "uuid",
    "driver_version",
    "memory.total",
    "compute_cap",
)

_MISSING = {"", "[n/a]", "n/a", "[not supported]", "[unknown error]"}


def _value(raw: str) -> str | None:
    text = raw.strip()
    return None if text.lower() in _MISSING else text


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    # memory.total without nounits reads "23028 MiB"
    head = raw.split()[0]
    try:
        return float(head)
    except ValueError:
        return None


def nvidia_smi_gpus(
    stdout: str, fields: list[str] | tuple[str, ...] = QUERY_FIELDS
) -> list[dict[str, Any]]:
    """One dict per GPU: index, name, uuid, driver_version, memory_mib, compute_cap (float).

    Raises ValueError on a line whose column count does not match `fields` (e.g. an error message
    from an old driver that does not know a field), so bad output never passes silently.
    """
    gpus: list[dict[str, Any]] = []
    reader = csv.reader(io.StringIO(stdout), skipinitialspace=True)
    for row in reader:
        if not row or all(not cell.strip() for cell in row):
            continue
        if len(row) != len(fields):
            expected = ", ".join(fields)
            line = ",".join(row)
            raise ValueError(
                f"nvidia-smi line has {len(row)} columns, "
                f"expected {len(fields)} ({expected}): {line!r}"
            )
        raw = {field: _value(cell) for field, cell in zip(fields, row, strict=True)}
        index = _number(raw.get("index"))
        memory = _number(raw.get("memory.total"))
        cc = _number(raw.get("compute_cap"))
        gpus.append(
            {
                "index": int(index) if index is not None else len(gpus),
                "name": raw.get("name") or "unknown",
                "uuid": raw.get("uuid") or "",
                "driver_version": raw.get("driver_version") or "",
                "memory_mib": int(memory) if memory is not None else None,
                "compute_cap": cc,
            }
        )
    return gpus


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def gpu_preflight_problems(
    gpus: list[dict[str, Any]],
    slots: int,
    min_driver: str,
    need_mib: int = 0,
    min_compute_cap: float = 0.0,
) -> list[str]:
    """Human-readable problems (empty list = the node passes)."""
    problems: list[str] = []
    if len(gpus) != int(slots):
        problems.append(
            f"{len(gpus)} GPU(s) visible but tpserve_slots={slots}: "
            "set tpserve_slots for this node to "
            f"{len(gpus)} or fix the missing GPUs (nvidia-smi -L)"
        )
    for gpu in gpus:
        label = f"GPU {gpu['index']} ({gpu['name']})"
        driver = gpu.get("driver_version") or ""
        if not driver:
            problems.append(f"{label}: driver version unknown")
        elif _version_tuple(driver) < _version_tuple(str(min_driver)):
            problems.append(
                f"{label}: driver {driver} < {min_driver}, the minimum of the CUDA stack "
                "(tpserve_torch_version x tpserve_cuda_variant in tpserve_cuda_matrix): "
                "upgrade the NVIDIA driver or choose another tpserve_cuda_variant"
            )
        memory = gpu.get("memory_mib")
        if need_mib and (memory is None or memory < int(need_mib)):
            problems.append(
                f"{label}: {memory} MiB memory < {int(need_mib)} MiB needed for its model shard: "
                "raise tpserve_tp_size, use a smaller model or dtype"
            )
        cc = gpu.get("compute_cap")
        if min_compute_cap and (cc is None or cc < float(min_compute_cap)):
            problems.append(
                f"{label}: compute capability {cc} < {min_compute_cap} "
                "needed by tpserve_engine=fastgen: "
                "choose tpserve_engine=autotp"
            )
    return problems


class FilterModule:
    """Ansible filter plugin entry point."""

    def filters(self) -> dict[str, Any]:
        return {
            "nvidia_smi_gpus": nvidia_smi_gpus,
            "gpu_preflight_problems": gpu_preflight_problems,
        }
