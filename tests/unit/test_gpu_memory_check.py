"""gpu_preflight's memory check (tasks/memory.yml), also run by serve.yml's validation: the
app's python -m tpserve.tools.memory on this node's smallest GPU. Here on localhost with a stand-in
nvidia-smi that reports an A10 (23028 MiB) and the Qwen2.5-14B shape's config.json: TP=1 stops with
the numbers and the settings to change; TP=2 fits; an asked KV cache that cannot fit names it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from conftest import REPO, Run, assert_nothing_changed, run_playbook

QWEN_14B = {
    "model_type": "qwen2",
    "num_hidden_layers": 48,
    "hidden_size": 5120,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "intermediate_size": 13824,
    "vocab_size": 152064,
    "max_position_embeddings": 32768,
}


def _run(tmp_path: Path, tp: int, kv_cache_gb: float = 0) -> Run:
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps(QWEN_14B))
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 23028\necho 23028\n")
    smi.chmod(0o755)
    task_vars = {
        "gpu_preflight_nvidia_smi": str(smi),
        "gpu_preflight_model_dir": str(model),
        "gpu_preflight_python": sys.executable,
        "gpu_preflight_tp_size": tp,
        "gpu_preflight_max_batch_size": 32,
        "gpu_preflight_kv_cache_gb": kv_cache_gb,
    }
    include = {"name": "gpu_preflight", "tasks_from": "memory"}
    play = [
        {
            "name": "memory check",
            "hosts": "localhost",
            "gather_facts": False,
            "tasks": [{"ansible.builtin.include_role": include, "vars": task_vars}],
        }
    ]
    playbook = tmp_path / "memory.yml"
    playbook.write_text(json.dumps(play))
    inv = tmp_path / "hosts.ini"
    inv.write_text(
        f"localhost ansible_connection=local ansible_python_interpreter={sys.executable}\n"
    )
    return run_playbook(
        tmp_path, inv, str(playbook), f"-e ansible_roles_path={REPO / 'roles'}", check=False
    )


def test_14b_on_one_a10_stops_with_the_numbers(tmp_path: Path) -> None:
    run = _run(tmp_path, tp=1)
    assert run.rc != 0
    out = " ".join(run.out.split())
    assert "the model does not fit: GPU 22.49 GiB = weights/rank 27.51" in out, out[-2000:]
    assert "larger TP size" in out and "tpserve_tp_size=1" in out
    assert_nothing_changed(run)


def test_14b_over_two_a10s_fits(tmp_path: Path) -> None:
    run = _run(tmp_path, tp=2)
    assert run.rc == 0, run.out[-3000:]
    assert "localhost: fits" in run.out and '"fits": true' in run.out
    assert_nothing_changed(run)


@pytest.mark.parametrize("kv", [40])
def test_an_asked_kv_cache_that_cannot_fit_names_the_setting(tmp_path: Path, kv: int) -> None:
    run = _run(tmp_path, tp=2, kv_cache_gb=kv)
    assert run.rc != 0
    out = " ".join(run.out.split())
    assert f"--kv-cache-gb {kv} does not fit" in out and f"tpserve_kv_cache_gb={kv}" in out, out[
        -2000:
    ]
