"""Issue 11 item 2: nvcc only where fastgen runs, and NVIDIA's CUDA apt repository derived from the
node's distribution and release (roles/dl_stack/filter_plugins/cuda_apt.py); dl_stack's defaults
(prebuild/nvcc off for autotp) through the role's argspec entry point on localhost."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from conftest import REPO, load_module, run_playbook, write_inventory

ca = load_module("cuda_apt_filters", REPO / "roles/dl_stack/filter_plugins/cuda_apt.py")
TABLE = yaml.safe_load((REPO / "group_vars/all/cuda_stack.yml").read_text())
BASE = TABLE["tpserve_cuda_apt_repos"]


def _facts(dist: str, version: str, major: str, arch: str = "x86_64") -> dict:
    return {
        "distribution": dist,
        "distribution_version": version,
        "distribution_major_version": major,
        "architecture": arch,
    }


@pytest.mark.parametrize(
    ("facts", "url"),
    [
        (_facts("Ubuntu", "22.04", "22"), f"{BASE}/ubuntu2204/x86_64/"),
        (_facts("Ubuntu", "24.04", "24"), f"{BASE}/ubuntu2404/x86_64/"),
        (_facts("Ubuntu", "20.04", "20"), f"{BASE}/ubuntu2004/x86_64/"),
        (_facts("Debian", "12.8", "12"), f"{BASE}/debian12/x86_64/"),
        (_facts("Debian", "13.1", "13"), f"{BASE}/debian13/x86_64/"),
        (_facts("Ubuntu", "22.04", "22", "aarch64"), f"{BASE}/ubuntu2204/sbsa/"),
    ],
)
def test_repository_from_the_nodes_facts(facts: dict, url: str) -> None:
    assert ca.cuda_apt_repo_url(facts, BASE) == url
    assert ca.cuda_apt_repo_url(facts, BASE + "/") == url  # a mirror base with a trailing slash


def test_nvidias_base_and_key_are_in_the_one_table() -> None:
    assert BASE == "https://developer.download.nvidia.com/compute/cuda/repos"
    assert TABLE["tpserve_cuda_apt_key_file"] == "3bf863cc.pub"


@pytest.mark.parametrize(
    ("facts", "words"),
    [
        (_facts("RedHat", "9.4", "9"), "distribution 'RedHat'"),
        (_facts("Ubuntu", "", ""), "cannot read the release"),
        (_facts("Ubuntu", "22.04", "22", "ppc64le"), "architecture 'ppc64le'"),
        ({}, "'unknown'"),
    ],
)
def test_unsupported_nodes_are_refused_with_the_reason(facts: dict, words: str) -> None:
    with pytest.raises(AnsibleFilterError, match=words):
        ca.cuda_apt_repo_url(facts, BASE)


@pytest.mark.parametrize(
    ("accel", "engine", "prebuild"),
    [
        ("cuda", "autotp", "False"),
        ("cuda", "fastgen", "True"),
        ("cuda", "auto", "True"),
        ("cpu", "auto", "False"),
    ],
)
def test_fastgen_ops_and_nvcc_only_where_fastgen_may_run(
    tmp_path: Path, accel: str, engine: str, prebuild: str
) -> None:
    (tmp_path / "group_vars").symlink_to(REPO / "group_vars")
    play = tmp_path / "show.yml"
    play.write_text(
        "---\n- hosts: te1\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role: {name: dl_stack, tasks_from: argspec, public: true}\n"
        "    - ansible.builtin.debug:\n"
        "        msg: 'SHOW prebuild={{ dl_stack_prebuild_cuda_ops | bool }}'\n"
    )
    inv = write_inventory(
        tmp_path / "inv",
        {"tpserve_accelerator": accel, "tpserve_engine": engine, "tpserve_cuda_variant": "cu126"},
        nodes=1,
    )
    run = run_playbook(tmp_path, inv, str(play))
    assert run.rc == 0, run.out[-3000:]
    assert f"SHOW prebuild={prebuild}" in run.out, run.out[-2000:]


def test_derived_repository_on_this_machine(tmp_path: Path) -> None:
    """The role's derived default with this machine's real facts (Debian 12 here): --check, the
    repository task only, nothing changes."""
    (tmp_path / "group_vars").symlink_to(REPO / "group_vars")
    play = tmp_path / "repo.yml"
    play.write_text(
        "---\n- hosts: te1\n  gather_facts: true\n  tasks:\n"
        "    - ansible.builtin.include_role: {name: dl_stack, tasks_from: argspec, public: true}\n"
        "    - ansible.builtin.debug:\n"
        "        msg: 'SHOW {{ dl_stack_cuda_apt_repo_effective }}"
        " {{ dl_stack_cuda_apt_key_effective }}'\n"
    )
    inv = write_inventory(
        tmp_path / "inv",
        {
            "tpserve_accelerator": "cuda",
            "tpserve_engine": "fastgen",
            "dl_stack_cuda_install_toolkit": True,
        },
        nodes=1,
    )
    run = run_playbook(tmp_path, inv, str(play))
    assert run.rc == 0, run.out[-3000:]
    distro = ca.cuda_apt_distro(
        {
            "distribution": "Debian",
            "distribution_major_version": Path("/etc/debian_version").read_text().split(".")[0],
        }
    )
    url = f"{BASE}/{distro}/x86_64/"
    assert f"SHOW {url} {url}3bf863cc.pub" in " ".join(run.out.split()), run.out[-2000:]
