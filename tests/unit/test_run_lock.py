"""The run lock (playbooks/lock.yml + unlock.yml) that keeps two site.yml/serve.yml runs from
interleaving, exercised for real on a throw-away inventory whose master is this machine
(ansible_connection local) with the lock directory in tmp_path."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from conftest import REPO, run_playbook, write_inventory

PLAY = """---
- name: Lock
  ansible.builtin.import_playbook: {repo}/playbooks/lock.yml
- name: Work
  hosts: tpserve_master
  gather_facts: false
  tasks:
    - name: The lock is held while the run works
      ansible.builtin.command: cat {lock}/owner
      register: held
      changed_when: false
    - name: Show
      ansible.builtin.debug:
        msg: "owner during the run: {{{{ held.stdout }}}}"
- name: Unlock
  ansible.builtin.import_playbook: {repo}/playbooks/unlock.yml
"""


def _setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    lock = tmp_path / "run.lock"
    play = tmp_path / "locked.yml"
    play.write_text(PLAY.format(repo=REPO, lock=lock))
    return lock, play, write_inventory(tmp_path / "inv")


def _run(tmp_path: Path, inv: Path, play: Path, lock: Path, *extra: str):
    return run_playbook(
        tmp_path, inv, str(play), "-e", f"tpserve_lock_dir={lock}", *extra, check=False
    )


def test_a_run_takes_the_lock_and_gives_it_back(tmp_path: Path) -> None:
    lock, play, inv = _setup(tmp_path)
    run = _run(tmp_path, inv, play, lock)
    assert run.rc == 0, run.out[-3000:]
    assert f"owner during the run: {socket.gethostname()} pid=" in run.out
    assert not lock.exists()  # given back
    assert run.recap()["localhost"]["changed"] == 0  # bookkeeping: a converged run stays changed=0


def test_a_second_run_waits_then_fails_naming_the_holder(tmp_path: Path) -> None:
    lock, play, inv = _setup(tmp_path)
    holder = subprocess.Popen(["sleep", "60"])  # a live "run" of this controller
    try:
        lock.mkdir()
        (lock / "owner").write_text(f"{socket.gethostname()} pid={holder.pid} since=now\n")
        t0 = time.monotonic()
        run = _run(tmp_path, inv, play, lock, "-e", "tpserve_lock_wait=5")
        took = time.monotonic() - t0
    finally:
        holder.kill()
    out = " ".join(run.out.split())
    assert run.rc != 0 and "Another tpserve run holds the lock" in out, out[-2000:]
    assert f"pid={holder.pid}" in out and "owner during the run" not in out  # never interleaved
    assert took >= 5, took
    assert (
        (lock / "owner").read_text().startswith(socket.gethostname())
    )  # the holder's lock is kept


def test_the_lock_of_a_run_that_died_is_taken_over(tmp_path: Path) -> None:
    lock, play, inv = _setup(tmp_path)
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.mkdir()
    (lock / "owner").write_text(f"{socket.gethostname()} pid={dead.pid} since=earlier\n")
    run = _run(tmp_path, inv, play, lock, "-e", "tpserve_lock_wait=0")
    assert run.rc == 0, run.out[-3000:]
    assert "took over the lock of a run that is gone" in run.out and not lock.exists()


def test_another_controllers_lock_is_respected(tmp_path: Path) -> None:
    lock, play, inv = _setup(tmp_path)
    lock.mkdir()
    (lock / "owner").write_text(f"other-controller pid={os.getpid()} since=now\n")
    run = _run(tmp_path, inv, play, lock, "-e", "tpserve_lock_wait=0")
    assert run.rc != 0 and "other-controller" in run.out


def test_check_mode_takes_no_lock(tmp_path: Path) -> None:
    lock, play, inv = _setup(tmp_path)
    run = run_playbook(tmp_path, inv, str(play), "-e", f"tpserve_lock_dir={lock}", check=True)
    assert "Another tpserve run" not in run.out and not lock.exists()
