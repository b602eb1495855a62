"""Issue 11 item 10, the cluster network preflight (role net_preflight) on this machine: two
"nodes" with ansible_connection local on loopback addresses, the controller's torch, gloo over lo.
The blocked-port case with a real firewall rule runs on the lab (tests/integration.sh)."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from conftest import assert_nothing_changed, run_playbook, write_inventory

PLAY = """---
- name: Network preflight on a throw-away inventory
  hosts: tpserve
  gather_facts: true
  any_errors_fatal: true
  roles:
    - role: net_preflight
"""

VARS = {
    "net_preflight_python": sys.executable,
    "net_preflight_user": "root",
    "net_preflight_ifname": "lo",
    # the role's defaults: a 4 s connection timeout failed a HEALTHY pair once when make test ran
    # the app tests beside tests/unit (load ~4 on 2 cores)
    "net_preflight_timeout": 10,
    "net_preflight_deadline": 25,
    "net_preflight_bytes": 4 << 20,
    "net_preflight_iters": 5,
}


def _play(tmp_path: Path) -> Path:
    play = tmp_path / "net.yml"
    play.write_text(PLAY)
    return play


def test_healthy_pairs_print_latency_and_bandwidth(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv", {**VARS, "net_preflight_port": 29471}, nodes=3)
    run = run_playbook(tmp_path, inv, str(_play(tmp_path)), check=True)
    assert run.rc == 0, run.out[-4000:]
    assert_nothing_changed(run)  # read-only, and it runs in --check
    out = re.sub(r"\s+", " ", run.out)  # the yaml callback wraps long lines
    for worker in ("te2", "te3"):
        assert re.search(
            rf"te1 <-> {worker}: latency [0-9.]+ ms .*bandwidth [0-9.]+ MB/s to the worker, "
            r"[0-9.]+ MB/s to the master",
            out,
        ), run.out[-4000:]
    # and the three as one group: the workers reach each other too, not only the master
    group_line = "all 3 nodes as one group (the workers among themselves too): connected"
    assert group_line in out, run.out[-4000:]


def test_a_worker_that_cannot_join_is_named_within_the_deadline(tmp_path: Path) -> None:
    """te3's check cannot run (its python exits at once): the pair te1 <-> te3 is named, with the
    ports to open; te2's pair is fine and not named."""
    inv = write_inventory(tmp_path / "inv", {**VARS, "net_preflight_port": 29472}, nodes=3)
    host_vars = inv / "host_vars"
    host_vars.mkdir()
    (host_vars / "te3.yml").write_text("---\nnet_preflight_python: /bin/false\n")
    t0 = time.monotonic()
    run = run_playbook(tmp_path, inv, str(_play(tmp_path)), check=False)
    took = time.monotonic() - t0
    assert run.rc != 0, run.out[-4000:]
    out = re.sub(r"\s+", " ", run.out)
    assert "failed for 1 node pair(s)" in out, run.out[-4000:]
    assert "te1 (127.0.0.11) <-> te3 (127.0.0.13)" in out, run.out[-4000:]
    assert "te1 (127.0.0.11) <-> te2" not in out
    assert "one group" not in out  # a pair failed: the whole group is not tried
    assert "port 29500 on the master" in out and "ip_local_port_range" in out
    assert_nothing_changed(run)
    assert took < 60, f"took {took:.0f} s"


GROUP_FAILS = """---
- name: The failure message when every pair is fine but the workers cannot reach each other
  hosts: tpserve
  gather_facts: false
  vars_files:
    - {root}/roles/net_preflight/defaults/main.yml
    - {root}/roles/net_preflight/vars/main.yml
  tasks:
    - name: What each node's check printed (the master's and a worker's view of the group)
      ansible.builtin.set_fact:
        net_preflight_run_result:
          stdout_lines:
            - >-
              {{{{ {{"ok": false, "port_range": "32768-60999", "pairs": pairs[inventory_hostname],
                    "group": {{"ok": false, "size": 3, "error": err[inventory_hostname]}}}}
                 | to_json }}}}
      vars:
        pairs:
          te1: [{{worker: te2, ok: true, stage: done}}, {{worker: te3, ok: true, stage: done}}]
          te2: [{{worker: te2, ok: true, stage: done}}]
          te3: [{{worker: te3, ok: true, stage: done}}]
        err:
          te1: "RuntimeError: timed out"
          te2: "RuntimeError: Connection refused 127.0.0.13"
          te3: null
    - name: The failures
      ansible.builtin.debug:
        msg: >-
          FAILURES {{{{ net_preflight_failures | to_json }}}}
          REPORT {{{{ net_preflight_report_lines | to_json }}}}
      run_once: true
"""


def test_workers_that_cannot_reach_each_other_are_named(tmp_path: Path) -> None:
    """The role's failure text for a failed whole-group stage (every master pair fine)."""
    inv = write_inventory(tmp_path / "inv", {**VARS, "net_preflight_port": 29473}, nodes=3)
    play = tmp_path / "group.yml"
    play.write_text(GROUP_FAILS.format(root=Path(__file__).resolve().parents[2]))
    run = run_playbook(tmp_path, inv, str(play), check=False)
    assert run.rc == 0, run.out[-4000:]
    out = re.sub(r"\s+", " ", run.out)
    named = (
        "the workers among themselves (127.0.0.12, 127.0.0.13): each reaches the master, but all 3"
    )
    assert named in out, out[-3000:]
    assert "te2 saw: RuntimeError: Connection refused 127.0.0.13" in out
    assert "te1 saw: RuntimeError" in out
    assert "all 3 nodes as one group (the workers among themselves too): FAILED" in out, out[-3000:]
