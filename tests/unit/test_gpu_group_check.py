"""serve.yml's across-nodes group check (gpu_preflight tasks/group.yml, issue 12): the nodes of one
TP group must have the master's GPUs and about the same free GPU memory. The filter alone, then the
task file on two local "nodes" whose stand-in nvidia-smi answer differently: a mismatch stops naming
the node and the numbers, changed=0; equal nodes pass."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import REPO, Run, assert_nothing_changed, load_module, run_playbook

smi = load_module("nvidia_smi_filters", REPO / "roles/gpu_preflight/filter_plugins/nvidia_smi.py")
FIELDS = ["index", "name", "uuid", "driver_version", "memory.total", "compute_cap", "memory.free"]
A10 = "0, NVIDIA A10, GPU-a, 550.54.15, 23028, 8.6, {free}\n"
H100 = "0, NVIDIA H100, GPU-h, 550.54.15, 81559, 9.0, 80000\n"


def gpus(text: str) -> list[dict]:
    return smi.nvidia_smi_gpus(text, FIELDS)


def test_filter_uniform_group_passes() -> None:
    nodes = {f"te{i}": gpus(A10.format(free=22000 + i * 100)) for i in range(1, 5)}
    assert smi.gpu_group_mismatch(nodes, "te1") == []


def test_filter_names_the_odd_node_and_its_numbers() -> None:
    nodes = {
        "te1": gpus(A10.format(free=22000)),
        "te2": gpus(H100),
        "te3": gpus(A10.format(free=22000) * 2),
    }
    problems = smi.gpu_group_mismatch(nodes, "te1")
    assert len(problems) == 2
    assert "te2 has 1 GPU(s), compute capability 9.0, memory 81559 MiB" in problems[0]
    assert "the master te1 has 1 GPU(s), compute capability 8.6, memory 23028 MiB" in problems[0]
    assert problems[1].startswith("te3 has 2 GPU(s)")


def test_filter_free_memory_gap() -> None:
    nodes = {"te1": gpus(A10.format(free=22000)), "te2": gpus(A10.format(free=15000))}
    (problem,) = smi.gpu_group_mismatch(nodes, "te1", 1024)
    assert (
        "te2: 15000 MiB free" in problem
        and "te1 22000 MiB" in problem
        and "tpserve_kv_cache_gb" in problem
    )
    assert smi.gpu_group_mismatch(nodes, "te1", 8000) == []


def _run(tmp_path: Path, answers: dict[str, str]) -> Run:
    lines = []
    for host, text in answers.items():
        tool = tmp_path / f"nvidia-smi-{host}"
        tool.write_text(f"#!/bin/sh\nprintf '%s' '{text}'\n")
        tool.chmod(0o755)
        lines.append(
            f"{host} ansible_connection=local ansible_python_interpreter={sys.executable} "
            f"gpu_preflight_nvidia_smi={tool}"
        )
    inv = tmp_path / "hosts.ini"
    inv.write_text(
        "[tpserve_master]\n" + lines[0] + "\n[tpserve_workers]\n" + "\n".join(lines[1:]) + "\n"
    )
    play = [
        {
            "name": "group check",
            "hosts": "tpserve_master:tpserve_workers",
            "gather_facts": False,
            "tasks": [
                {"ansible.builtin.include_role": {"name": "gpu_preflight", "tasks_from": "group"}}
            ],
        }
    ]
    playbook = tmp_path / "group.yml"
    playbook.write_text(json.dumps(play))
    return run_playbook(
        tmp_path, inv, str(playbook), f"-e ansible_roles_path={REPO / 'roles'}", check=False
    )


def test_serve_validation_stops_on_a_node_with_other_gpus(tmp_path: Path) -> None:
    run = _run(tmp_path, {"te1": A10.format(free=22000), "te2": H100})
    assert run.rc != 0
    out = " ".join(run.out.split())
    assert "The nodes of one tensor-parallel group differ" in out, out[-2000:]
    assert "te2 has 1 GPU(s), compute capability 9.0, memory 81559 MiB" in out
    assert "tpserve_layout=replicas" in out
    assert_nothing_changed(run)


def test_serve_validation_passes_equal_nodes(tmp_path: Path) -> None:
    run = _run(tmp_path, {"te1": A10.format(free=22000), "te2": A10.format(free=21900)})
    assert run.rc == 0, run.out[-3000:]
    assert "2 nodes, each 1 GPU(s) like the master's" in run.out
    assert_nothing_changed(run)
