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
    "net_preflight_timeout": 4,
    "net_preflight_deadline": 20,
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
    assert "port 29500 on the master" in out and "ip_local_port_range" in out
    assert_nothing_changed(run)
    assert took < 60, f"took {took:.0f} s"
