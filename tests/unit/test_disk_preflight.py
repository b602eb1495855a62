"""Issue 11 item 7, free-space preflight (role disk_preflight) on this machine through a local
throw-away inventory: a requirement that does not fit fails naming the node, the path, the bytes
free and needed, and changes nothing (--check and a real run alike)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import assert_nothing_changed, run_playbook, write_inventory

PLAY = """---
- name: Free space on a throw-away inventory
  hosts: tpserve
  gather_facts: false
  roles:
    - role: disk_preflight
"""


def _run(tmp_path: Path, extra: dict, check: bool):
    base = tmp_path / "data" / "tpserve"  # does not exist yet: its parent is checked
    inv = write_inventory(tmp_path / "inv", {"tpserve_base_dir": str(base), **extra}, nodes=1)
    play = tmp_path / "disk.yml"
    play.write_text(PLAY)
    return base, run_playbook(tmp_path, inv, str(play), check=check)


def test_room_enough_passes(tmp_path: Path) -> None:
    _, run = _run(tmp_path, {"tpserve_model_disk_bytes": 1000}, check=True)
    assert run.rc == 0, run.out[-3000:]
    assert re.search(r"GB free, [0-9.]+ GB needed", run.out), run.out[-3000:]
    assert_nothing_changed(run)


@pytest.mark.parametrize("check", [True, False])
def test_a_model_that_does_not_fit_is_refused_naming_path_and_bytes(
    tmp_path: Path, check: bool
) -> None:
    huge = 10**18  # 1 EB
    base, run = _run(tmp_path, {"tpserve_model_disk_bytes": huge}, check=check)
    out = re.sub(r"\s+", " ", run.out)
    assert run.rc != 0, run.out[-3000:]
    assert f"te1: {base} (filesystem " in out, run.out[-3000:]
    assert f"checked at {tmp_path}" in out
    needed = huge + 300000000 + 1300000000 + 2000000000
    assert f"tpserve needs {needed} bytes" in out, run.out[-3000:]
    assert f"model {huge} + wheelhouse 300000000" in out
    assert "tpserve_base_dir" in out
    assert_nothing_changed(run)
    assert not base.exists()
