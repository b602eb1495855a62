"""Issue 11 item 9, inventory hygiene: the fact cache is per inventory
(plugins/cache/tpserve_facts.py), every entry playbook fails on an empty tpserve group, and a
Hugging Face model must be pinned to a commit. Runs only on throw-away inventories in tmp_path
(see conftest.py), never on jakarta or the lab."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from conftest import (
    REPO,
    ansible_bin,
    assert_nothing_changed,
    load_module,
    run_playbook,
    write_inventory,
)

PLUGIN = REPO / "plugins/cache/tpserve_facts.py"
SHA = "d149729398750b98c0af14eb82c78cfe92750796"


facts = load_module("tpserve_facts", PLUGIN)


# --- the cache key ---


def test_key_differs_per_inventory_and_is_readable(tmp_path: Path) -> None:
    (tmp_path / "lab").mkdir()
    (tmp_path / "other" / "lab").mkdir(parents=True)
    a = facts.inventory_cache_key([str(tmp_path / "lab")])
    b = facts.inventory_cache_key([str(tmp_path / "other" / "lab")])
    assert a != b
    assert a.startswith("lab-") and b.startswith("lab-")
    assert re.fullmatch(r"[A-Za-z0-9_.+-]+", a)


def test_key_follows_symlinks_and_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "jakarta").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "jakarta")
    direct = facts.inventory_cache_key([str(tmp_path / "jakarta")])
    assert facts.inventory_cache_key([str(tmp_path / "link")]) == direct
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert facts.inventory_cache_key(["jakarta/"]) == direct
    finally:
        os.chdir(cwd)


def test_key_of_several_sources_and_host_lists() -> None:
    one = facts.inventory_cache_key(["/x/a"])
    both = facts.inventory_cache_key(["/x/a", "/x/b"])
    assert one != both and both.startswith("a+b-")
    assert facts.inventory_cache_key("h1,h2,").startswith("hostlist-")
    assert facts.inventory_cache_key([]) == "no-inventory"


def test_repo_inventories_get_distinct_keys() -> None:
    lab = facts.inventory_cache_key([str(REPO / "inventory/lab")])
    jakarta = facts.inventory_cache_key([str(REPO / "inventory/jakarta")])
    assert lab != jakarta and lab.startswith("lab-") and jakarta.startswith("jakarta-")


def test_ansible_cfg_uses_the_plugin() -> None:
    cfg = (REPO / "ansible.cfg").read_text()
    assert re.search(r"^fact_caching\s*=\s*tpserve_facts\s*$", cfg, re.M)
    assert re.search(r"^cache_plugins\s*=\s*plugins/cache\s*$", cfg, re.M)


def _set_and_read(tmp_path: Path, inv: Path, value: str | None) -> str:
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_CACHE_PLUGIN_CONNECTION": str(tmp_path / "facts"),
    }
    args = (
        ["-m", "ansible.builtin.set_fact", "-a", f"cacheable=true unit_marker={value}"]
        if value is not None
        else ["-m", "ansible.builtin.debug", "-a", "var=unit_marker"]
    )
    out = subprocess.run(
        [ansible_bin("ansible"), "-i", str(inv), "te1", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    return out


def test_same_host_name_in_two_inventories_never_shares_facts(tmp_path: Path) -> None:
    """te1 exists in both inventories (like the lab and jakarta); each sees only its own facts."""
    lab = write_inventory(tmp_path / "lab", nodes=1)
    site = write_inventory(tmp_path / "site", nodes=1)
    _set_and_read(tmp_path, lab, "from-lab")
    assert "from-lab" in _set_and_read(tmp_path, lab, None)
    out = _set_and_read(tmp_path, site, None)
    assert "from-lab" not in out
    assert re.search(r"is undefined|NOT DEFINED", out), out
    dirs = sorted(p.name for p in (tmp_path / "facts").iterdir())
    assert len(dirs) == 2 and dirs[0].startswith("lab-") and dirs[1].startswith("site-")


# --- empty tpserve group ---


@pytest.mark.parametrize("playbook", ["site.yml", "serve.yml", "smoketest.yml"])
def test_entry_playbooks_fail_on_an_empty_group(tmp_path: Path, playbook: str) -> None:
    inv = write_inventory(tmp_path / "empty", empty=True)
    run = run_playbook(tmp_path, inv, playbook)
    assert run.rc != 0, run.out[-2000:]
    assert "No hosts in group tpserve" in run.out
    assert "-i inventory/<site>" in run.out
    assert_nothing_changed(run)


# --- the model revision pin ---


def _hf(**extra: object) -> dict[str, object]:
    return {"model_source": "hf", "model_hf_repo_id": "Qwen/Qwen2.5-7B", **extra}


@pytest.mark.parametrize("revision", ["main", "v1.0", SHA[:12], SHA.upper(), ""])
def test_guardrails_refuse_an_unpinned_revision(tmp_path: Path, revision: str) -> None:
    inv = write_inventory(tmp_path / "inv", _hf(model_hf_revision=revision))
    run = run_playbook(tmp_path, inv, "playbooks/guardrails.yml")
    assert run.rc != 0, run.out[-2000:]
    assert "40-hex commit sha" in run.out and "model_hf_allow_unpinned_revision" in run.out
    assert "huggingface.co/Qwen/Qwen2.5-7B/commits/main" in run.out
    assert_nothing_changed(run)


def test_guardrails_accept_a_commit_or_the_explicit_opt_out(tmp_path: Path) -> None:
    ok = write_inventory(tmp_path / "pinned", _hf(model_hf_revision=SHA))
    run = run_playbook(tmp_path, ok, "playbooks/guardrails.yml")
    assert run.rc == 0, run.out[-3000:]
    assert_nothing_changed(run)
    opt_out = write_inventory(
        tmp_path / "optout", _hf(model_hf_revision="main", model_hf_allow_unpinned_revision=True)
    )
    run = run_playbook(tmp_path, opt_out, "playbooks/guardrails.yml")
    assert run.rc == 0, run.out[-3000:]


def test_jakarta_pins_a_commit() -> None:
    gv = yaml.safe_load((REPO / "inventory/jakarta/group_vars/tpserve/main.yml").read_text())
    assert gv["model_source"] == "hf"
    assert re.fullmatch(r"[0-9a-f]{40}", gv["model_hf_revision"])
    assert not gv.get("model_hf_allow_unpinned_revision", False)
