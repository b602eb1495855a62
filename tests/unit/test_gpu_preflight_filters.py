"""Unit tests of roles/gpu_preflight/filter_plugins/nvidia_smi.py (the nvidia-smi CSV parser and
the checks). Samples are real `nvidia-smi --query-gpu=index,name,uuid,driver_version,memory.total,
compute_cap --format=csv,noheader,nounits` output shapes; the role's GPU path itself needs a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import load_module

PLUGIN = Path(__file__).resolve().parents[2] / "roles/gpu_preflight/filter_plugins/nvidia_smi.py"


nvsmi = load_module("nvidia_smi_filters", PLUGIN)

# One A10 per node (the Jakarta cluster's shape).
A10 = "0, NVIDIA A10, GPU-3f1c2b7e-8d11-4c54-9a0b-55f0c1e2d3a4, 550.127.05, 23028, 8.6\n"
# Two H200 (the perf host's shape); trailing blank line as printed by nvidia-smi.
H200X2 = (
    "0, NVIDIA H200, GPU-aaaaaaaa-1111-2222-3333-444444444444, 580.95.05, 143771, 9.0\n"
    "1, NVIDIA H200, GPU-bbbbbbbb-1111-2222-3333-444444444444, 580.95.05, 143771, 9.0\n"
    "\n"
)
# A T4 without units stripped and a [N/A] compute capability.
ODD = "0, Tesla T4, GPU-cccccccc-1111-2222-3333-444444444444, 535.54.03, 15360 MiB, [N/A]\n"


def test_parse_a10() -> None:
    gpus = nvsmi.nvidia_smi_gpus(A10)
    assert gpus == [
        {
            "index": 0,
            "name": "NVIDIA A10",
            "uuid": "GPU-3f1c2b7e-8d11-4c54-9a0b-55f0c1e2d3a4",
            "driver_version": "550.127.05",
            "memory_mib": 23028,
            "compute_cap": 8.6,
        }
    ]


def test_parse_two_gpus_and_blank_lines() -> None:
    gpus = nvsmi.nvidia_smi_gpus(H200X2)
    assert [g["index"] for g in gpus] == [0, 1]
    assert {g["memory_mib"] for g in gpus} == {143771}
    assert {g["compute_cap"] for g in gpus} == {9.0}


def test_parse_units_and_missing_values() -> None:
    (gpu,) = nvsmi.nvidia_smi_gpus(ODD)
    assert gpu["memory_mib"] == 15360
    assert gpu["compute_cap"] is None


def test_parse_rejects_error_text() -> None:
    # What an old driver prints for an unknown field (rc != 0, but never parse it as a GPU).
    with pytest.raises(ValueError, match="columns"):
        nvsmi.nvidia_smi_gpus('Field "compute_cap" is not a valid field to query.\n')


def test_parse_empty_output_is_no_gpu() -> None:
    assert nvsmi.nvidia_smi_gpus("") == []


def test_a10_passes_for_qwen_7b_tp4() -> None:
    gpus = nvsmi.nvidia_smi_gpus(A10)
    need_mib = int(15.23e9 / 4 * 1.2 / 2**20)  # Qwen2.5-7B bf16 over TP=4, 20% headroom
    assert nvsmi.gpu_preflight_problems(gpus, 1, "525.0", need_mib, 8.0) == []


def test_wrong_count_names_the_variable() -> None:
    problems = nvsmi.gpu_preflight_problems(nvsmi.nvidia_smi_gpus(A10), 2, "525.0")
    assert len(problems) == 1
    assert "tpserve_slots=2" in problems[0] and "1 GPU(s)" in problems[0]


def test_old_driver_is_reported() -> None:
    problems = nvsmi.gpu_preflight_problems(nvsmi.nvidia_smi_gpus(A10), 1, "580.0")
    assert len(problems) == 1
    assert "driver 550.127.05 < 580.0, the minimum of the CUDA stack" in problems[0]


def test_driver_compare_is_numeric_not_lexical() -> None:
    gpus = nvsmi.nvidia_smi_gpus(A10)  # 550.127.05
    assert nvsmi.gpu_preflight_problems(gpus, 1, "550.54") == []
    assert nvsmi.gpu_preflight_problems(gpus, 1, "550.127.5") == []
    assert len(nvsmi.gpu_preflight_problems(gpus, 1, "550.128")) == 1


def test_memory_too_small_for_full_model_on_one_a10() -> None:
    gpus = nvsmi.nvidia_smi_gpus(A10)
    need_mib = int(15.23e9 * 2 / 2**20)  # fp32 7B model on one GPU
    problems = nvsmi.gpu_preflight_problems(gpus, 1, "525.0", need_mib)
    assert len(problems) == 1 and "MiB needed" in problems[0]


def test_fastgen_compute_capability() -> None:
    old = nvsmi.nvidia_smi_gpus(ODD)  # T4, CC unknown
    problems = nvsmi.gpu_preflight_problems(old, 1, "525.0", 0, 8.0)
    assert len(problems) == 1 and "tpserve_engine=fastgen" in problems[0]
    # Without fastgen (min CC 0) the same GPU passes.
    assert nvsmi.gpu_preflight_problems(old, 1, "525.0", 0, 0.0) == []


def test_filter_module_exports() -> None:
    filters = nvsmi.FilterModule().filters()
    assert set(filters) == {"nvidia_smi_gpus", "gpu_preflight_problems", "gpu_group_mismatch"}
