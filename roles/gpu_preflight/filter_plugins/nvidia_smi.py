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
        free = _number(raw.get("memory.free"))
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
        if "memory.free" in fields:  # asked by the group check (tasks/group.yml) only
            gpus[-1]["memory_free_mib"] = int(free) if free is not None else None
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


def _shape(gpus: list[dict[str, Any]]) -> tuple[int, list[str], list[int]]:
    caps = sorted(str(g.get("compute_cap")) for g in gpus)
    return len(gpus), caps, sorted(int(g.get("memory_mib") or 0) for g in gpus)


def _summary(gpus: list[dict[str, Any]]) -> str:
    count, caps, totals = _shape(gpus)
    memory = "/".join(str(m) for m in sorted(set(totals)))
    return f"{count} GPU(s), compute capability {'/'.join(sorted(set(caps)))}, memory {memory} MiB"


def gpu_group_mismatch(
    nodes: dict[str, list[dict[str, Any]]], master: str, free_tolerance_mib: int = 1024
) -> list[str]:
    """Problems of ONE tensor-parallel group over several nodes (empty list = uniform).

    Every node must have the master's GPU count (one rank per GPU), compute capability (FastGen's
    ops are built per arch; mixed arches also mix kernels) and GPU memory size, and its GPUs' free
    memory may differ from the master's by at most `free_tolerance_mib`: every rank sizes its
    KV cache from what is free, and rank 0 schedules by its own cache, so a rank with less runs out.
    """
    if master not in nodes:
        return [f"the master {master} reported no GPUs"]
    ref = nodes[master]
    ref_free = min((g.get("memory_free_mib") or 0) for g in ref) if ref else 0
    problems: list[str] = []
    for node, gpus in sorted(nodes.items()):
        if node == master:
            continue
        if _shape(gpus) != _shape(ref):
            problems.append(f"{node} has {_summary(gpus)}; the master {master} has {_summary(ref)}")
            continue
        free = min((g.get("memory_free_mib") or 0) for g in gpus) if gpus else 0
        if abs(free - ref_free) > int(free_tolerance_mib):
            problems.append(
                f"{node}: {free} MiB free on its fullest GPU, the master {master} {ref_free} MiB "
                f"(more than {int(free_tolerance_mib)} MiB apart): another process holds GPU "
                "memory (nvidia-smi on that node), or set tpserve_kv_cache_gb so that every rank "
                "allocates the same"
            )
    return problems


class FilterModule:
    """Ansible filter plugin entry point."""

    def filters(self) -> dict[str, Any]:
        return {
            "nvidia_smi_gpus": nvidia_smi_gpus,
            "gpu_preflight_problems": gpu_preflight_problems,
            "gpu_group_mismatch": gpu_group_mismatch,
        }
