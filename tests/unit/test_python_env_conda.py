"""Issue 11 item 6, the conda backend on a shared data disk: the prefix is the service user's,
its parent (/data) keeps its owner and mode, and a missing parent is made by root, never with the
service user's ownership. python_env's real task file (tasks/conda_layout.yml: what conda.yml runs
first) runs for real on this machine in tmp_path, as root, with the service user `nobody`; twice
(the second run changes nothing). The installer is not run (github.com is unreachable here)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import yaml
from conftest import REPO, assert_nothing_changed, run_playbook, write_inventory

PLAY = """---
- name: The conda backend's directories on a throw-away inventory
  hosts: tpserve
  gather_facts: false
  tasks:
    - name: Python_env's conda layout
      ansible.builtin.include_role:
        name: python_env
        tasks_from: conda_layout
"""
NOBODY, NOGROUP = 65534, 65534
OTHER = 4242  # the data disk's owner: neither root nor the service user


def _run(tmp_path: Path, prefix: Path) -> object:
    gv = {
        "python_env_user": "nobody",
        "python_env_group": "nogroup",
        "python_env_conda_prefix": str(prefix),
        "python_env_conda_download_dir": str(tmp_path / "tpserve" / "downloads"),
    }
    inv = write_inventory(tmp_path / "inv", gv, nodes=1)
    play = tmp_path / "conda-layout.yml"
    play.write_text(PLAY)
    return run_playbook(tmp_path, inv, str(play), check=False)


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (chown to the service user)")


def test_an_existing_parent_keeps_its_owner_and_mode(tmp_path: Path, as_root: None) -> None:
    data = tmp_path / "data"  # a shared data disk: someone else's, mode 0751, other files on it
    data.mkdir()
    (data / "datasets").mkdir()
    os.chown(data, OTHER, OTHER)
    data.chmod(0o751)
    (tmp_path / "tpserve").mkdir()
    prefix = data / "miniforge3"
    for attempt in (1, 2):
        run = _run(tmp_path, prefix)
        assert run.rc == 0, run.out[-3000:]
        st = data.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (OTHER, OTHER, 0o751), attempt
        pst = prefix.stat()
        assert (pst.st_uid, pst.st_gid, stat.S_IMODE(pst.st_mode)) == (NOBODY, NOGROUP, 0o755)
        assert (data / "datasets").stat().st_uid == 0
        if attempt == 2:
            assert_nothing_changed(run)
    assert (tmp_path / "tpserve" / "downloads").stat().st_uid == NOBODY
    assert not any(
        p.name.startswith(".tpserve") for p in data.iterdir()
    )  # nothing else put on /data


def test_a_missing_parent_is_made_by_root_not_the_service_user(
    tmp_path: Path, as_root: None
) -> None:
    (tmp_path / "tpserve").mkdir()
    prefix = tmp_path / "data" / "shared" / "miniforge3"  # neither data nor data/shared exist
    run = _run(tmp_path, prefix)
    assert run.rc == 0, run.out[-3000:]
    for parent in (tmp_path / "data", tmp_path / "data" / "shared"):
        st = parent.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 0, 0o755), parent
    assert prefix.stat().st_uid == NOBODY
    assert_nothing_changed(_run(tmp_path, prefix))


def test_installer_url_and_sha256_are_pinned_together() -> None:
    """The default installer is Miniforge (conda-forge), one setting holding URL and sha256."""
    defaults = yaml.safe_load((REPO / "roles/python_env/defaults/main.yml").read_text())
    installer = defaults["python_env_conda_installer"]
    assert set(installer) == {"url", "sha256"}
    assert installer["url"].startswith(
        "https://github.com/conda-forge/miniforge/releases/download/"
    )
    version = installer["url"].split("/")[-2]
    assert installer["url"].endswith(f"/Miniforge3-{version}-Linux-x86_64.sh")
    assert len(installer["sha256"]) == 64 and int(installer["sha256"], 16) >= 0
    assert "python_env_conda_installer_url" not in defaults
    assert "python_env_conda_installer_sha256" not in defaults
    assert defaults["python_env_conda_channels"] == ["conda-forge"]
    assert defaults["python_env_conda_accept_tos"] is False
