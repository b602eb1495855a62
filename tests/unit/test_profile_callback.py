"""plugins/callback/tpserve_profile.py: task wall times and the report (a fake clock), and the
callback really loads in ansible-playbook and prints the slowest task of a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from conftest import REPO, load_module, run_playbook

profile = load_module("tpserve_profile", REPO / "plugins/callback/tpserve_profile.py")


def test_each_task_runs_until_the_next_starts() -> None:
    now = [0.0]
    t = profile.Timings(clock=lambda: now[0])
    for name, at in (("a", 1.0), ("b", 4.0), ("a", 5.0)):
        now[0] = at
        t.task(name)
    now[0] = 5.5
    lines = t.report(top=5)
    assert lines[0] == "tpserve_profile: 5.5 s in all; the 2 slowest tasks:"
    assert lines[1].split() == ["3.5", "s", "a"] and lines[2].split() == ["1.0", "s", "b"]


def test_ansible_prints_the_profile(tmp_path: Path, monkeypatch) -> None:
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "slow one", "ansible.builtin.command": "sleep 1", "changed_when": False},
        {"name": "quick one", "ansible.builtin.debug": {"msg": "hi"}},
    ]}]  # fmt: skip
    playbook = tmp_path / "p.yml"
    playbook.write_text(json.dumps(play))
    inv = tmp_path / "hosts.ini"
    inv.write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    monkeypatch.setenv("ANSIBLE_CALLBACKS_ENABLED", "tpserve_profile")
    run = run_playbook(tmp_path, inv, str(playbook), check=False)
    assert run.rc == 0, run.out[-2000:]
    lines = run.out.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("tpserve_profile:"))
    assert lines[head + 1].endswith("slow one") and float(lines[head + 1].split()[0]) >= 1.0
    # the command ran on localhost (the controller), the debug is controller-side: no node work
    assert "tpserve_profile: 0 module runs on the nodes (none)" in lines


def test_module_runs_count_node_work_only() -> None:
    runs = profile.RemoteRuns()
    runs.add("ansible.builtin.command", "te1")
    runs.add("ansible.builtin.copy", "te2", "te1")  # delegated: the delegate ran it
    runs.add("ansible.builtin.assert", "te1")  # controller-side actions do not count
    runs.add("set_fact", "te2")
    runs.add("ansible.builtin.command", "te1", "localhost")  # delegated to the controller
    assert runs.report() == "tpserve_profile: 2 module runs on the nodes (te1 2)"
    assert profile.RemoteRuns().report() == "tpserve_profile: 0 module runs on the nodes (none)"
