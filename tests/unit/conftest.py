"""Helpers for the playbook-level unit tests: throw-away inventories whose nodes are this machine
through `ansible_connection: local` and whose fact cache lives in the test's tmp_path.

Safety: these tests never use inventory/jakarta or inventory/lab. The guard-rail play only runs
controller-side actions (asserts, a stat of the lock) and, on CUDA clusters, a read-only
`nvidia-smi` query (here: a stand-in script from tmp_path); the runs add --check as a second net,
and every test asserts changed=0."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


def load_module(name: str, path: Path) -> ModuleType:
    """Import a plugin or role script that is not on sys.path (filter plugins, cache plugins)."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BIN = Path(sys.executable).parent


def ansible_bin(name: str) -> str:
    exe = BIN / name
    if exe.exists():
        return str(exe)
    fallback = REPO / ".venv" / "bin" / name
    return str(fallback)


# A small valid CPU cluster (two nodes, venv, synthetic model); tests override what they need.
BASE_VARS: dict[str, object] = {
    "ansible_connection": "local",
    "ansible_python_interpreter": sys.executable,
    "tpserve_accelerator": "cpu",
    "tpserve_slots": 1,
    "tpserve_tp_size": 2,
    "tpserve_layout": "tp_across_nodes",
    "tpserve_engine": "autotp",
    "tpserve_dtype": "float32",
    "tpserve_model_name": "unit-test",
    "python_env_backend": "venv",
    "model_source": "synthetic",
}


@dataclass
class Run:
    rc: int
    out: str

    def recap(self) -> dict[str, dict[str, int]]:
        hosts: dict[str, dict[str, int]] = {}
        for line in self.out.splitlines():
            m = re.match(r"^(\S+)\s+:\s+(ok=.*)$", line)
            if m:
                hosts[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
        return hosts


def write_inventory(
    root: Path, group_vars: dict[str, object] | None = None, nodes: int = 2, empty: bool = False
) -> Path:
    """inventory dir with hosts.yml (te1 master, te2.. workers) and group_vars/tpserve/main.yml."""
    root.mkdir(parents=True, exist_ok=True)
    if empty:
        hosts: dict[str, object] = {"all": {"children": {"tpserve": {}}}}
    else:
        master = {"te1": {"ansible_host": "127.0.0.11"}}
        workers = {f"te{i}": {"ansible_host": f"127.0.0.{10 + i}"} for i in range(2, nodes + 1)}
        children: dict[str, object] = {"tpserve_master": {"hosts": master}}
        if workers:
            children["tpserve_workers"] = {"hosts": workers}
        hosts = {"all": {"children": {"tpserve": {"children": children}}}}
    (root / "hosts.yml").write_text("---\n" + yaml.safe_dump(hosts, sort_keys=False))
    gv = root / "group_vars" / "tpserve"
    gv.mkdir(parents=True, exist_ok=True)
    merged = {**BASE_VARS, **(group_vars or {})}
    (gv / "main.yml").write_text("---\n" + yaml.safe_dump(merged, sort_keys=False))
    return root


def run_playbook(
    tmp_path: Path, inventory: Path, playbook: str, *args: str, check: bool = True
) -> Run:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
    }
    cmd = [ansible_bin("ansible-playbook"), "-i", str(inventory), playbook, *args]
    if check:
        cmd.append("--check")
    proc = subprocess.run(
        cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    return Run(proc.returncode, proc.stdout + proc.stderr)


def assert_nothing_changed(run: Run) -> None:
    recap = run.recap()
    assert recap, run.out[-3000:]
    for host, counts in recap.items():
        assert counts.get("changed", 0) == 0, f"{host} changed something:\n{run.out[-3000:]}"


@pytest.fixture
def inventory(tmp_path: Path):
    def make(group_vars: dict[str, object] | None = None, **kw: object) -> Path:
        name = str(kw.pop("name", "inv"))
        return write_inventory(tmp_path / name, group_vars, **kw)  # type: ignore[arg-type]

    return make
