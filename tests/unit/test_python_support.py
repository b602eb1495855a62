"""Issue 11 item 6, Python on other releases: one table of supported CPython versions
(group_vars/all/python.yml) backed by a recorded check of the lock against the package index
(tests/lock/python-support.json, `make lock-check`); python_env's interpreter check refuses an
unsupported or mixed Python before any change, naming the node, its version, the supported ones and
what to do; dl_stack builds the wheelhouse for the nodes' version."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import REPO, assert_nothing_changed, load_module, run_playbook, write_inventory

pe = load_module("python_env_filters", REPO / "roles/python_env/filter_plugins/python_env.py")
TABLE = [
    str(v)
    for v in yaml.safe_load((REPO / "group_vars/all/python.yml").read_text())[
        "tpserve_python_versions"
    ]
]
RECORD = json.loads((REPO / "tests/lock/python-support.json").read_text())


def _node(version: str, full: str = "", release: str = "Debian 12") -> dict[str, str]:
    return {
        "version": version,
        "full": full or version + ".0",
        "python": "/usr/bin/python3",
        "release": release,
    }


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


# --- the table and the record it rests on ---


def test_the_table_is_the_versions_the_record_says_the_lock_installs_on() -> None:
    assert TABLE == ["3.11", "3.12", "3.13"]
    for version in TABLE:
        assert RECORD["summary"][version] == "ok", f"the lock cannot be installed on {version}"
    # Ubuntu 22.04's python3: numpy 2.4.6 and ten other pins need >= 3.11
    assert RECORD["summary"]["3.10"] != "ok"
    assert RECORD["results"]["3.10"]["numpy==2.4.6"].startswith("NO")


def test_the_record_is_for_the_current_lock() -> None:
    lock = (REPO / "app/requirements.lock").read_bytes()
    assert RECORD["lock_sha256"] == hashlib.sha256(lock).hexdigest(), (
        "app/requirements.lock changed after tests/lock/python-support.json was recorded: run "
        "`make lock-check` and adjust tpserve_python_versions (group_vars/all/python.yml)"
    )
    pins = [line for line in lock.decode().splitlines() if "==" in line.split("#")[0]]
    for version in RECORD["summary"]:
        assert len(RECORD["results"][version]) == len(pins)


def test_no_second_copy_of_the_table() -> None:
    defaults = yaml.safe_load((REPO / "roles/python_env/defaults/main.yml").read_text())
    assert defaults["python_env_supported_versions"] == "{{ tpserve_python_versions }}"
    for path in (REPO / "roles").rglob("*.yml"):
        assert not re.search(r"\[\s*['\"]3\.11['\"]\s*,\s*['\"]3\.12", path.read_text()), path


# --- the filters behind the interpreter check ---


def test_supported_and_equal_nodes_pass() -> None:
    nodes = {"te1": _node("3.13", release="Debian 13"), "te2": _node("3.13", release="Debian 13")}
    assert pe.python_env_interpreter_problems(nodes, TABLE, "venv") == []


def test_an_unsupported_python_names_node_version_supported_and_what_to_do() -> None:
    nodes = {
        "te1": _node("3.10", "3.10.12", "Ubuntu 22.04"),
        "te2": _node("3.10", "3.10.12", "Ubuntu 22.04"),
    }
    (msg,) = pe.python_env_interpreter_problems(nodes, TABLE, "venv")
    assert msg.startswith("te1, te2 (Ubuntu 22.04): /usr/bin/python3 is Python 3.10.12")
    assert "CPython 3.11, 3.12, 3.13 (tpserve_python_versions" in msg
    assert "python_env_backend: conda with python_env_python_version one of 3.11, 3.12, 3.13" in msg
    assert "Debian 12: 3.11, Debian 13: 3.13, Ubuntu 24.04: 3.12" in msg


def test_the_odd_node_is_named() -> None:
    nodes = {f"te{i}": _node("3.11") for i in (1, 2, 3)} | {
        "te4": _node("3.13", release="Debian 13")
    }
    (msg,) = pe.python_env_interpreter_problems(nodes, TABLE, "venv")
    assert (
        "te4 has Python 3.13 (Debian 13), while the other 3 node(s) (te1, te2, te3) have 3.11"
        in msg
    )


def test_a_tie_lists_every_version() -> None:
    nodes = {"te1": _node("3.11"), "te2": _node("3.12", release="Ubuntu 24.04")}
    (msg,) = pe.python_env_interpreter_problems(nodes, TABLE, "venv")
    assert "te1: Python 3.11 (Debian 12); te2: Python 3.12 (Ubuntu 24.04)" in msg


def test_a_venv_pin_that_differs_from_the_node_is_named() -> None:
    nodes = {"te1": _node("3.13", "3.13.5", "Debian 13")}
    (msg,) = pe.python_env_interpreter_problems(nodes, TABLE, "venv", "3.11")
    assert "python_env_python_version=3.11, but /usr/bin/python3 on te1 is Python 3.13.5" in msg


def test_conda_with_an_unsupported_version() -> None:
    nodes = {"te1": {"version": "3.10", "full": "3.10", "python": "conda", "release": ""}}
    (msg,) = pe.python_env_interpreter_problems(nodes, TABLE, "conda", "3.10")
    assert msg.startswith(
        "te1: python_env_python_version=3.10 (conda), which tpserve does not support"
    )


def test_nodes_outside_the_limit_come_from_the_cache_or_their_facts() -> None:
    cached = {"python_env_node_interpreter": _node("3.11")}
    facts = {
        "ansible_facts": {
            "distribution": "Debian",
            "distribution_major_version": "13",
            "python": {
                "executable": "/usr/bin/python3",
                "version": {"major": 3, "minor": 13, "micro": 5},
            },
        }
    }
    other = {
        "ansible_facts": {"python": {"executable": "/usr/bin/python3.13", "version": {"major": 3}}}
    }
    got = pe.python_env_interpreters(
        ["te1", "te2", "te3"],
        {"te1": cached, "te2": facts, "te3": other},
        "venv",
        "/usr/bin/python3",
    )
    assert got["te1"]["version"] == "3.11"
    assert got["te2"] == {
        "version": "3.13",
        "full": "3.13.5",
        "python": "/usr/bin/python3",
        "release": "Debian 13",
    }
    assert "te3" not in got  # its facts are of another interpreter: unknown, left out


# --- the check as site.yml runs it (playbooks/interpreter.yml), on throw-away local nodes ---


def _inventory(tmp_path: Path, versions: dict[str, str], **group_vars: object) -> Path:
    inv = write_inventory(tmp_path / "inv", dict(group_vars), nodes=len(versions))
    (inv / "host_vars").mkdir()
    for host, version in versions.items():
        python = tmp_path / f"python-{host}"
        python.write_text(f"#!/bin/sh\necho {version}\n")  # a stand-in python3 of that version
        python.chmod(0o755)
        (inv / "host_vars" / f"{host}.yml").write_text(
            f"---\npython_env_venv_base_python: {python}\n"
        )
    return inv


def test_interpreter_play_passes_supported_equal_nodes(tmp_path: Path) -> None:
    inv = _inventory(tmp_path, {"te1": "3.13.5", "te2": "3.13.5"})
    run = run_playbook(tmp_path, inv, "playbooks/interpreter.yml")
    assert run.rc == 0, run.out[-3000:]
    assert "Python 3.13 on 2 node(s) (venv); supported: 3.11, 3.12, 3.13" in _flat(run.out)
    assert_nothing_changed(run)


def test_interpreter_play_refuses_ubuntu_2204s_python(tmp_path: Path) -> None:
    inv = _inventory(tmp_path, {"te1": "3.10.12", "te2": "3.10.12"})
    run = run_playbook(tmp_path, inv, "playbooks/interpreter.yml")
    out = _flat(run.out)
    assert run.rc != 0
    assert "te1, te2" in out and "is Python 3.10.12, which tpserve does not support" in out, out[
        -3000:
    ]
    assert "CPython 3.11, 3.12, 3.13" in out and "python_env_backend: conda" in out
    assert_nothing_changed(run)


def test_interpreter_play_names_the_odd_node(tmp_path: Path) -> None:
    inv = _inventory(tmp_path, {"te1": "3.11.2", "te2": "3.11.2", "te3": "3.12.3"})
    run = run_playbook(tmp_path, inv, "playbooks/interpreter.yml")
    out = _flat(run.out)
    assert run.rc != 0
    assert re.search(
        r"te3 has Python 3\.12( \([^)]*\))?, while the other 2 node\(s\) \(te1, te2\) have 3\.11",
        out,
    ), out[-3000:]
    assert_nothing_changed(run)


def test_site_stops_before_the_first_change(tmp_path: Path) -> None:
    """site.yml on nodes whose python3 is 3.10: guard-rails pass, facts are gathered, the run ends
    in the interpreter play, before the cluster plumbing (the first play that changes a node)."""
    inv = _inventory(tmp_path, {"te1": "3.10.12", "te2": "3.10.12"})
    # the facts play wants every node's host key (this machine runs no sshd)
    for host in ("te1", "te2"):
        with (inv / "host_vars" / f"{host}.yml").open("a") as handle:
            handle.write("ansible_ssh_host_key_ed25519_public: AAAAC3NzaC1lZDI1NTE5AAAAIStandIn\n")
    run = run_playbook(tmp_path, inv, "site.yml")
    assert run.rc != 0
    assert (
        "PLAY [Interpreter | every node's Python is supported and the same (read-only)]" in run.out
    )
    assert "which tpserve does not support" in _flat(run.out)
    assert "PLAY [Cluster" not in run.out
    assert_nothing_changed(run)


@pytest.mark.parametrize(("pin", "ok"), [("", True), ("3.13", True), ("3.11", False)])
def test_a_venv_pin(tmp_path: Path, pin: str, ok: bool) -> None:
    inv = _inventory(tmp_path, {"te1": "3.13.5", "te2": "3.13.5"}, python_env_python_version=pin)
    run = run_playbook(tmp_path, inv, "playbooks/interpreter.yml")
    assert (run.rc == 0) is ok, run.out[-3000:]
    if not ok:
        assert "python_env_python_version=3.11, but " in _flat(run.out)
        assert re.search(r" on te1(, te2)? is Python 3\.13\.5", _flat(run.out))
