"""dl_stack guards on this machine: the NVIDIA driver hold (in --check mode, nothing is held for
real: matching packages would be held, others left alone) and the controller check before the
wheelhouse build."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_playbook


def _run(tmp_path: Path, pattern: str):
    include = {"name": "dl_stack", "tasks_from": "driver_hold"}
    task = {
        "ansible.builtin.include_role": include,
        "vars": {"dl_stack_nvidia_driver_package_pattern": pattern},
    }
    play = [{"name": "driver hold", "hosts": "localhost", "gather_facts": False, "tasks": [task]}]
    (tmp_path / "p.yml").write_text(json.dumps(play))
    (tmp_path / "hosts.ini").write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    return run_playbook(
        tmp_path,
        tmp_path / "hosts.ini",
        str(tmp_path / "p.yml"),
        f"-e ansible_roles_path={REPO / 'roles'}",
        "-v",
    )


@pytest.mark.skipif(shutil.which("dpkg") is None, reason="needs a Debian-family machine (dpkg)")
def test_matching_packages_would_be_held_and_others_not(tmp_path: Path) -> None:
    run = _run(tmp_path, "^(zstd|rsync)$")  # stand-ins for nvidia-driver-*: installed by make deps
    assert run.rc == 0, run.out[-3000:]
    assert "changed: [localhost] => (item=rsync)" in run.out and "(item=zstd)" in run.out, run.out[
        -3000:
    ]
    none = _run(tmp_path, "^(nvidia-driver-|libnvidia-)")  # no NVIDIA driver on this machine
    assert none.rc == 0 and "item=" not in none.out, none.out[-3000:]


def test_wheelhouse_refuses_a_controller_of_another_machine_type(tmp_path: Path) -> None:
    """dl_stack builds the nodes' wheelhouse on the controller; pip's markers follow the controller,
    so a controller that is not Linux of the nodes' machine type is refused before any build."""
    include = {"name": "dl_stack", "tasks_from": "wheelhouse"}
    task = {"ansible.builtin.include_role": include, "vars": {"dl_stack_target_arch": "aarch64"}}
    play = [{"name": "wheelhouse", "hosts": "localhost", "gather_facts": False, "tasks": [task]}]
    (tmp_path / "w.yml").write_text(json.dumps(play))
    (tmp_path / "hosts.ini").write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    run = run_playbook(
        tmp_path,
        tmp_path / "hosts.ini",
        str(tmp_path / "w.yml"),
        f"-e ansible_roles_path={REPO / 'roles'}",
    )
    out = " ".join(run.out.split())
    assert (
        run.rc != 0
        and "this controller is 'Linux x86_64'" in out
        and "dl_stack_target_arch is aarch64" in out
    ), out[-2000:]
    assert "Build or reuse the wheelhouse" not in run.out  # refused before the build
