"""`make integration-jakarta`'s inventory (tests/lab/jakarta_inventory.py): Jakarta's group_vars
applied to lab nodes with only the overrides of tests/lab/jakarta-overrides.yml. The generator runs
for real on a throw-away inventory (no lab, nothing connects); the guard-rail play (controller-only
on CPU clusters) passes the result and refuses it with Jakarta's own engine."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, assert_nothing_changed, run_playbook

SCRIPT = REPO / "tests/lab/jakarta_inventory.py"
JAKARTA_FILE = REPO / "inventory/jakarta/group_vars/tpserve/main.yml"
JAKARTA = yaml.safe_load(JAKARTA_FILE.read_text())
OVERRIDES = yaml.safe_load((REPO / "tests/lab/jakarta-overrides.yml").read_text())["overrides"]
LAB: dict = {}
for _f in sorted((REPO / "inventory/lab/group_vars/tpserve").glob("*.yml")):
    LAB.update(yaml.safe_load(_f.read_text()))


def _gen(action: str, inventory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), action, str(inventory)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


@pytest.fixture
def lab_inventory(tmp_path: Path) -> Path:
    """hosts.yml as tests/lab/lab.sh writes it (4 nodes), then the generator's group_vars."""
    inv = tmp_path / "jk-inv"
    inv.mkdir()
    hosts = {f"jk-te{i}": {"ansible_host": f"10.89.31.{10 + i}"} for i in range(1, 5)}
    tree = {
        "all": {
            "children": {
                "tpserve": {
                    "children": {
                        "tpserve_master": {"hosts": {"jk-te1": hosts["jk-te1"]}},
                        "tpserve_workers": {
                            "hosts": {k: v for k, v in hosts.items() if k != "jk-te1"}
                        },
                    }
                }
            }
        }
    }
    (inv / "hosts.yml").write_text("---\n" + yaml.safe_dump(tree))
    run = _gen("write", inv)
    assert run.returncode == 0, run.stderr
    return inv


def test_every_override_changes_something_and_says_why() -> None:
    names = [e["var"] for e in OVERRIDES]
    assert len(names) == len(set(names))
    assert "tpserve_accelerator" in names and "tpserve_engine" in names
    for e in OVERRIDES:
        assert len(e["why"].split()) >= 5, e["var"]
        value = LAB[e["var"]] if e.get("from_lab") else e["value"]
        # an entry equal to Jakarta's own value would not be an override
        assert e["var"] not in JAKARTA or JAKARTA[e["var"]] != value, e["var"]
    # what Jakarta decides about serving stays Jakarta's
    for kept in ("tpserve_layout", "tpserve_tp_size", "tpserve_dtype", "tpserve_model_name",
                 "python_env_python_version", "ansible_user"):  # fmt: skip
        assert kept not in names


def test_write_links_jakarta_and_check_holds(lab_inventory: Path) -> None:
    gv = lab_inventory / "group_vars/tpserve"
    link = gv / "00-jakarta.yml"
    assert link.is_symlink() and link.resolve() == JAKARTA_FILE.resolve()
    written = yaml.safe_load((gv / "99-lab-overrides.yml").read_text())
    assert list(written) == [e["var"] for e in OVERRIDES]
    run = _gen("check", lab_inventory)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"resolve the {len(JAKARTA)} variables Jakarta sets" in run.stdout


def test_check_names_a_variable_that_drifted_from_jakarta(lab_inventory: Path) -> None:
    extra = lab_inventory / "group_vars/tpserve/99-lab-overrides.yml"
    extra.write_text(extra.read_text() + "tpserve_dtype: float32\n")
    run = _gen("check", lab_inventory)
    assert run.returncode == 1
    assert 'jk-te1: tpserve_dtype = "float32", expected "bfloat16"' in run.stderr


def test_clean_removes_only_what_write_made(lab_inventory: Path) -> None:
    assert _gen("clean", lab_inventory).returncode == 0
    assert not (lab_inventory / "group_vars").exists()
    assert (lab_inventory / "hosts.yml").exists()


def test_a_committed_inventory_is_refused() -> None:
    run = _gen("write", REPO / "inventory/lab")
    assert run.returncode == 2 and "committed inventory" in run.stderr


def test_guardrails_pass_the_overrides_and_refuse_jakartas_engine_on_cpu(
    tmp_path: Path, lab_inventory: Path
) -> None:
    run = run_playbook(tmp_path, lab_inventory, "playbooks/guardrails.yml")
    assert run.rc == 0, run.out[-3000:]
    assert_nothing_changed(run)
    run = run_playbook(
        tmp_path,
        lab_inventory,
        "playbooks/guardrails.yml",
        "-e",
        f"tpserve_engine={JAKARTA['tpserve_engine']}",
    )
    assert run.rc != 0
    assert "tpserve_engine=fastgen (DeepSpeed inference v2) runs on CUDA only" in run.out
