"""inventory/jakarta's settings (issue 11 items 1, 4, 9) pass the guard-rails as a whole: its
group_vars are READ from the file and applied to a throw-away inventory of 4 local nodes with a
stand-in nvidia-smi printing an A10 with a typical cloud driver. Nothing connects to the real
cluster: inventory/jakarta itself is only parsed here (tests/lint.sh runs its --syntax-check)."""

from __future__ import annotations

from pathlib import Path

import yaml
from conftest import REPO, assert_nothing_changed, run_playbook, write_inventory

JAKARTA = yaml.safe_load((REPO / "inventory/jakarta/group_vars/tpserve/main.yml").read_text())


def test_jakarta_serves_7b_as_fastgen_replicas() -> None:
    assert JAKARTA["model_hf_repo_id"] == "Qwen/Qwen2.5-7B"
    assert JAKARTA["tpserve_layout"] == "replicas"
    assert JAKARTA["tpserve_engine"] == "fastgen"
    assert JAKARTA["tpserve_tp_size"] == 1 and JAKARTA["tpserve_slots"] == 1
    assert JAKARTA["tpserve_cuda_arch"] == "8.6"  # A10: CC 8.6 >= 8.0 for fastgen


def _jakarta_on_localhost(tmp_path: Path, **override: object) -> Path:
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '0, NVIDIA A10, 550.127.05'\n")
    smi.chmod(0o755)
    gv = {k: v for k, v in JAKARTA.items() if k != "ansible_user"}
    gv.update({"gpu_preflight_nvidia_smi": str(smi), **override})
    return write_inventory(tmp_path / "jakarta-like", gv, nodes=4)


def test_jakarta_settings_pass_the_guardrails(tmp_path: Path) -> None:
    run = run_playbook(tmp_path, _jakarta_on_localhost(tmp_path), "playbooks/guardrails.yml")
    assert run.rc == 0, run.out[-3000:]
    for node in ("te1", "te2", "te3", "te4"):
        assert f"{node}: driver 550.127.05 >= 525.60.13 (torch 2.13.0+cu126)" in run.out
    assert_nothing_changed(run)


def test_jakarta_uses_conda_with_a_supported_python() -> None:
    """jakarta's nodes are Ubuntu: conda brings CPython 3.11 whatever their python3 is (22.04: 3.10,
    which the lock does not support); the installer is the role's pinned Miniforge."""
    table = yaml.safe_load((REPO / "group_vars/all/python.yml").read_text())
    assert JAKARTA["python_env_backend"] == "conda"
    assert JAKARTA["python_env_python_version"] in table["tpserve_python_versions"]
    assert "python_env_conda_installer" not in JAKARTA  # the role's pin (URL + sha256 together)


def test_jakarta_without_the_conda_sha_stops_in_the_guardrails(tmp_path: Path) -> None:
    installer = {"url": "https://mirror.example/Miniforge3-Linux-x86_64.sh", "sha256": ""}
    inv = _jakarta_on_localhost(tmp_path, python_env_conda_installer=installer)
    run = run_playbook(tmp_path, inv, "playbooks/guardrails.yml")
    assert run.rc != 0 and "python_env_conda_installer" in run.out
    assert "sha256: that file's 64 hex digits" in " ".join(run.out.split())
    assert_nothing_changed(run)
