"""Issue 11 item 1, the CUDA stack matrix: ONE table (group_vars/all/cuda_stack.yml) of torch
version x CUDA variant -> wheel index, minimum NVIDIA driver, CUDA toolkit; its Python lookups
(roles/gpu_preflight/filter_plugins/cuda_matrix.py); and the guard-rail checks that read it (a pair
outside the table; every GPU node's driver, here through a stand-in nvidia-smi on localhost)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import REPO, assert_nothing_changed, load_module, run_playbook, write_inventory

PLUGIN = REPO / "roles/gpu_preflight/filter_plugins/cuda_matrix.py"
TABLE = yaml.safe_load((REPO / "group_vars/all/cuda_stack.yml").read_text())
MATRIX = TABLE["tpserve_cuda_matrix"]
TORCH = TABLE["tpserve_torch_version"]


cm = load_module("cuda_matrix_filters", PLUGIN)


def _gpu(driver: str, index: int = 0, name: str = "NVIDIA A10") -> dict:
    return {"index": index, "name": name, "driver_version": driver}


# --- the table ---


def test_torch_2_13_is_published_for_cu126_and_cu130_only() -> None:
    assert set(MATRIX[TORCH]) == {"cu126", "cu130", "cpu"}
    assert "cu124" not in MATRIX[TORCH]


@pytest.mark.parametrize("variant", ["cu126", "cu130"])
def test_rows_are_consistent(variant: str) -> None:
    row = MATRIX[TORCH][variant]
    assert row["index_url"] == f"https://download.pytorch.org/whl/{variant}"
    major, minor = variant[2:-1], variant[-1]
    assert row["toolkit"] == f"{major}.{minor}"
    assert row["toolkit_apt_package"] == f"cuda-toolkit-{major}-{minor}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", row["min_driver"])


def test_driver_minimums_follow_nvidia_compatibility() -> None:
    # CUDA 12.x: minor version compatibility from 525.60.13; CUDA 13.x: the R580 branch.
    assert MATRIX[TORCH]["cu126"]["min_driver"] == "525.60.13"
    assert MATRIX[TORCH]["cu130"]["min_driver"] == "580.65.06"
    assert MATRIX[TORCH]["cpu"]["min_driver"] == ""


def test_lock_pins_the_torch_the_table_describes() -> None:
    lock = (REPO / "app/requirements.lock").read_text()
    pins = re.findall(r"^torch==([^\s;+]+)", lock, re.M)
    assert pins == [TORCH]


def test_jakarta_picks_a_pair_an_a10_cloud_driver_runs() -> None:
    gv = yaml.safe_load((REPO / "inventory/jakarta/group_vars/tpserve/main.yml").read_text())
    variant = gv["tpserve_cuda_variant"]
    row = cm.cuda_matrix_entry(MATRIX, TORCH, variant)
    for driver in ("535.247.01", "550.127.05", "570.172.08"):  # R535 LTS, R550, R570
        assert cm.driver_at_least(driver, row["min_driver"]), driver


def _values(node: object) -> list[str]:
    """Every string value of a parsed YAML document (comments and descriptions excluded)."""
    if isinstance(node, dict):
        return [v for k, sub in node.items() if k != "description" for v in _values(sub)]
    if isinstance(node, list):
        return [v for sub in node for v in _values(sub)]
    return [node] if isinstance(node, str) else []


def test_no_second_copy_of_the_table_in_the_roles() -> None:
    """Index URLs, driver minimums and toolkit packages live in the table only."""
    fact = re.compile(r"download\.pytorch\.org/whl/cu\d+|cuda-toolkit-\d+-\d+|\b5\d\d\.\d+\.\d+\b")
    offenders = []
    for path in (REPO / "roles").rglob("*.yml"):
        for value in _values(yaml.safe_load(path.read_text())):
            if fact.search(value):
                offenders.append(f"{path.relative_to(REPO)}: {value[:80]}")
    assert not offenders, offenders


# --- the Python lookups ---


def test_pairs_list_every_cuda_variant() -> None:
    pairs = cm.cuda_matrix_pairs(MATRIX)
    assert pairs == [
        "torch 2.13.0+cu126 (driver >= 525.60.13, CUDA toolkit 12.6)",
        "torch 2.13.0+cu130 (driver >= 580.65.06, CUDA toolkit 13.0)",
    ]
    assert "torch 2.13.0+cpu" in cm.cuda_matrix_pairs(MATRIX, cuda_only=False)


def test_entry_and_unknown_pairs() -> None:
    assert cm.cuda_matrix_entry(MATRIX, "2.13.0", "cu126")["toolkit"] == "12.6"
    with pytest.raises(
        ValueError, match=r"torch 2\.13\.0\+cu124 is not in tpserve_cuda_matrix"
    ) as e:
        cm.cuda_matrix_entry(MATRIX, "2.13.0", "cu124")
    assert "tpserve_cuda_variant" in str(e.value) and "2.13.0+cu126" in str(e.value)
    with pytest.raises(ValueError, match="tpserve_torch_version"):
        cm.cuda_matrix_entry(MATRIX, "2.12.0", "cu126")


@pytest.mark.parametrize(
    ("driver", "variants"),
    [
        ("520.61.05", []),
        ("525.60.13", ["cu126"]),
        ("535.247.01", ["cu126"]),
        ("550.127.05", ["cu126"]),
        ("580.65.06", ["cu130", "cu126"]),
        ("580.95.05", ["cu130", "cu126"]),
        ("590.1", ["cu130", "cu126"]),
    ],
)
def test_variants_a_driver_runs(driver: str, variants: list[str]) -> None:
    assert cm.cuda_variants_for_driver(MATRIX, TORCH, driver) == variants


def test_driver_ok() -> None:
    assert cm.cuda_driver_problems([_gpu("550.127.05")], MATRIX, TORCH, "cu126") == []
    assert cm.cuda_driver_problems([_gpu("580.95.05")] * 2, MATRIX, TORCH, "cu130") == []


def test_driver_too_old_names_variables_alternatives_and_pairs() -> None:
    (msg,) = cm.cuda_driver_problems([_gpu("550.127.05")], MATRIX, TORCH, "cu130")
    assert "GPU 0 (NVIDIA A10): driver 550.127.05 < 580.65.06" in msg
    assert "tpserve_torch_version=2.13.0, tpserve_cuda_variant=cu130" in msg
    assert "set tpserve_cuda_variant to cu126" in msg
    assert "torch 2.13.0+cu126 (driver >= 525.60.13" in msg and "torch 2.13.0+cu130" in msg


def test_driver_too_old_for_every_variant() -> None:
    (msg,) = cm.cuda_driver_problems([_gpu("470.256.02")], MATRIX, TORCH, "cu126")
    assert "upgrade the NVIDIA driver to >= 525.60.13" in msg
    assert "set tpserve_cuda_variant" not in msg


def test_driver_edge_cases() -> None:
    assert cm.cuda_driver_problems([], MATRIX, TORCH, "cu126") == ["nvidia-smi lists no GPU"]
    assert (
        "driver version unknown" in cm.cuda_driver_problems([_gpu("")], MATRIX, TORCH, "cu126")[0]
    )
    mixed = [_gpu("580.95.05", 0), _gpu("550.54.15", 1)]
    problems = cm.cuda_driver_problems(mixed, MATRIX, TORCH, "cu130")
    assert len(problems) == 1 and problems[0].startswith("GPU 1")
    assert (
        "not in tpserve_cuda_matrix"
        in cm.cuda_driver_problems([_gpu("590.1")], MATRIX, TORCH, "cu124")[0]
    )


# --- the guard-rails ---


def _fake_smi(tmp_path: Path, lines: str | None) -> Path:
    path = tmp_path / "nvidia-smi"
    body = (
        f"cat <<'EOF'\n{lines}EOF\n"
        if lines is not None
        else "echo 'NVIDIA-SMI has failed' >&2; exit 9\n"
    )
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def _cuda_vars(smi: Path, variant: str) -> dict:
    return {
        "tpserve_accelerator": "cuda",
        "tpserve_engine": "autotp",
        "tpserve_cuda_variant": variant,
        "gpu_preflight_nvidia_smi": str(smi),
    }


def test_guardrails_refuse_cu124_listing_the_pairs(tmp_path: Path) -> None:
    smi = _fake_smi(tmp_path, "0, NVIDIA A10, 550.127.05\n")
    inv = write_inventory(tmp_path / "inv", _cuda_vars(smi, "cu124"))
    run = run_playbook(tmp_path, inv, "playbooks/guardrails.yml")
    assert run.rc != 0
    out = " ".join(run.out.split())
    assert "torch 2.13.0+cu124 is not in tpserve_cuda_matrix" in out
    assert "tpserve_cuda_variant=cu124" in out
    assert "torch 2.13.0+cu126 (NVIDIA driver >= 525.60.13, CUDA toolkit 12.6)" in out
    assert "Guard-rails | NVIDIA driver" not in run.out  # stopped in the controller play
    assert_nothing_changed(run)


def test_guardrails_pass_an_a10_driver_with_cu126(tmp_path: Path) -> None:
    smi = _fake_smi(tmp_path, "0, NVIDIA A10, 550.127.05\n")
    inv = write_inventory(tmp_path / "inv", _cuda_vars(smi, "cu126"))
    run = run_playbook(tmp_path, inv, "playbooks/guardrails.yml")
    assert run.rc == 0, run.out[-3000:]
    assert "te1: driver 550.127.05 >= 525.60.13 (torch 2.13.0+cu126)" in run.out
    assert_nothing_changed(run)


def test_guardrails_stop_an_a10_driver_with_cu130(tmp_path: Path) -> None:
    smi = _fake_smi(tmp_path, "0, NVIDIA A10, 550.127.05\n")
    inv = write_inventory(tmp_path / "inv", _cuda_vars(smi, "cu130"))
    run = run_playbook(tmp_path, inv, "site.yml")
    assert run.rc != 0
    out = " ".join(run.out.split())
    assert "driver 550.127.05 < 580.65.06, the minimum for torch 2.13.0+cu130" in out
    assert "set tpserve_cuda_variant to cu126" in out
    assert "PLAY [Facts | every tpserve node]" not in run.out  # before any other play
    assert_nothing_changed(run)


def test_guardrails_stop_when_nvidia_smi_fails(tmp_path: Path) -> None:
    smi = _fake_smi(tmp_path, None)
    inv = write_inventory(tmp_path / "inv", _cuda_vars(smi, "cu126"))
    run = run_playbook(tmp_path, inv, "playbooks/guardrails.yml")
    assert run.rc != 0
    out = " ".join(run.out.split())
    assert "is missing or failed" in out and "tpserve_accelerator=cpu" in out


def test_guardrails_skip_the_driver_check_on_cpu(tmp_path: Path) -> None:
    smi = _fake_smi(tmp_path, None)  # would fail if it ran
    inv = write_inventory(tmp_path / "inv", {"gpu_preflight_nvidia_smi": str(smi)})
    run = run_playbook(tmp_path, inv, "playbooks/guardrails.yml", "-v")
    assert run.rc == 0, run.out[-3000:]
    assert "NVIDIA driver version (nvidia-smi" not in run.out
    assert_nothing_changed(run)


def test_dl_stack_defaults_come_from_the_table(tmp_path: Path) -> None:
    """dl_stack's torch index and toolkit package for CUDA clusters (cu126, cu130) and a CPU one."""
    (tmp_path / "group_vars").symlink_to(REPO / "group_vars")  # the playbook's group_vars/all
    play = tmp_path / "show.yml"
    play.write_text(
        "---\n- hosts: te1\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role: {name: dl_stack, tasks_from: argspec, public: true}\n"
        "    - ansible.builtin.debug:\n"
        "        msg: 'SHOW {{ dl_stack_torch_index_url }} {{ dl_stack_cuda_apt_packages }}'\n"
    )
    for accel, variant, url, pkgs in [
        ("cuda", "cu126", "https://download.pytorch.org/whl/cu126", "['cuda-toolkit-12-6']"),
        ("cuda", "cu130", "https://download.pytorch.org/whl/cu130", "['cuda-toolkit-13-0']"),
        ("cpu", "cu130", "https://download.pytorch.org/whl/cpu", "[]"),
    ]:
        inv = write_inventory(
            tmp_path / f"inv-{accel}-{variant}",
            {
                "tpserve_accelerator": accel,
                "tpserve_cuda_variant": variant,
                "tpserve_engine": "autotp",
            },
        )
        run = run_playbook(tmp_path, inv, str(play))
        assert run.rc == 0, run.out[-3000:]
        assert f"SHOW {url} {pkgs}" in run.out, run.out[-2000:]


def test_fake_smi_helper_prints_csv(tmp_path: Path) -> None:
    smi = _fake_smi(tmp_path, "0, NVIDIA A10, 550.127.05\n")
    assert subprocess.run([str(smi)], capture_output=True, text=True, check=True).stdout == (
        "0, NVIDIA A10, 550.127.05\n"
    )


def _nvcc_check(tmp_path: Path, variant: str, release: str):
    """dl_stack's tasks/cuda_toolkit.yml on localhost with a stand-in nvcc. No apt: the repository
    and toolkit steps are off (no dl_stack_cuda_apt_repo_url) and dl_stack_build_packages is []."""
    home = tmp_path / f"cuda-{release}"
    (home / "bin").mkdir(parents=True)
    nvcc = home / "bin" / "nvcc"
    nvcc.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {release}, V{release}.1'\n")
    nvcc.chmod(0o755)
    (tmp_path / "group_vars").symlink_to(REPO / "group_vars")
    play = tmp_path / "nvcc.yml"
    play.write_text(
        "---\n- hosts: te1\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role: {name: dl_stack, tasks_from: cuda_toolkit.yml}\n"
    )
    inv = write_inventory(
        tmp_path / "inv",
        {
            "tpserve_accelerator": "cuda",
            "tpserve_engine": "autotp",
            "tpserve_cuda_variant": variant,
            "tpserve_cuda_home": str(home),
            "dl_stack_build_packages": [],
        },
        nodes=1,
    )
    return run_playbook(tmp_path, inv, str(play))


def test_nvcc_of_the_wheels_cuda_major_passes(tmp_path: Path) -> None:
    run = _nvcc_check(tmp_path, "cu126", "12.6")
    assert run.rc == 0, run.out[-3000:]
    assert_nothing_changed(run)


def test_nvcc_of_another_cuda_major_stops_naming_both(tmp_path: Path) -> None:
    run = _nvcc_check(tmp_path, "cu130", "12.6")
    assert run.rc != 0
    out = " ".join(run.out.split())
    assert "is CUDA 12.6, but torch 2.13.0+cu130 is built for CUDA 13.0" in out
    assert "cuda-toolkit-13-0" in out and "tpserve_cuda_variant" in out
