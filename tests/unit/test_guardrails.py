"""Issue 11 item 5, guard-rails complete: every role's variables are checked by the guard-rail play
(playbooks/guardrails.yml) before any change. Static checks of the roles' specs, and runs of the
play on throw-away inventories (conftest.py: connection local, --check, changed=0 asserted)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO, assert_nothing_changed, run_playbook, write_inventory

ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if (p / "tasks").is_dir())
GUARDRAILS = yaml.safe_load((REPO / "playbooks/guardrails.yml").read_text())
# Modules an `argspec` entry point may use: they run on the controller and change nothing.
CONTROLLER_ONLY = {
    "ansible.builtin.assert",
    "ansible.builtin.debug",
    "ansible.builtin.import_tasks",
    "ansible.builtin.set_fact",
    "ansible.builtin.stat",  # only with delegate_to: localhost (checked below)
}


def _validate_roles() -> list[str]:
    for play in GUARDRAILS:
        roles = play.get("vars", {}).get("guardrails_validate_roles")
        if roles:
            return roles
    raise AssertionError("guardrails_validate_roles not found in playbooks/guardrails.yml")


def _spec(role: str) -> dict:
    return yaml.safe_load((REPO / "roles" / role / "meta/argument_specs.yml").read_text())[
        "argument_specs"
    ]


def _tasks(path: Path) -> list[dict]:
    """The tasks of a file, following import_tasks (static includes) recursively."""
    out: list[dict] = []
    for task in yaml.safe_load(path.read_text()) or []:
        out.append(task)
        target = task.get("ansible.builtin.import_tasks")
        if target:
            out.extend(_tasks(path.parent / target))
    return out


def test_every_role_is_validated_by_the_guardrails() -> None:
    assert sorted(_validate_roles()) == ROLES


@pytest.mark.parametrize("role", ROLES)
def test_role_has_an_argspec_entry_covering_its_defaults(role: str) -> None:
    spec = _spec(role)
    assert spec.get("argspec") == spec["main"], f"{role}: argspec entry must equal main"
    defaults = yaml.safe_load((REPO / "roles" / role / "defaults/main.yml").read_text()) or {}
    missing = sorted(set(defaults) - set(spec["main"]["options"]))
    assert not missing, f"{role}: defaults without an argument spec: {missing}"
    assert (REPO / "roles" / role / "tasks/argspec.yml").is_file()


@pytest.mark.parametrize("role", ROLES)
def test_argspec_entry_point_touches_no_node(role: str) -> None:
    for task in _tasks(REPO / "roles" / role / "tasks/argspec.yml"):
        module = next(k for k in task if k.startswith("ansible.builtin."))
        assert module in CONTROLLER_ONLY, f"{role}: {module} in the argspec entry point"
        if module == "ansible.builtin.stat":
            assert task.get("delegate_to") == "localhost", f"{role}: stat off the controller"


@pytest.mark.parametrize("role", ROLES)
def test_no_role_dependencies(role: str) -> None:
    """include_role runs role dependencies in full: they would change nodes in the guard-rails."""
    meta = yaml.safe_load((REPO / "roles" / role / "meta/main.yml").read_text())
    assert not meta.get("dependencies")


# --- the play itself ---


def test_valid_cluster_passes_and_changes_nothing(tmp_path: Path) -> None:
    inv = write_inventory(tmp_path / "inv")
    run = run_playbook(tmp_path, inv, "playbooks/guardrails.yml")
    assert run.rc == 0, run.out[-3000:]
    assert_nothing_changed(run)
    for role in ROLES:
        assert f"included: {role} for" in run.out


@pytest.mark.parametrize(
    ("group_vars", "extra", "expect"),
    [
        # issue 11: conda without the installer's sha256, or without the CPython it installs
        (
            {
                "python_env_backend": "conda",
                "python_env_python_version": "3.11",
                "python_env_conda_installer": {
                    "url": "https://m.example/Miniforge3.sh",
                    "sha256": "",
                },
            },
            [],
            "python_env_conda_installer",
        ),
        (
            {"python_env_backend": "conda"},
            [],
            "python_env_python_version (the CPython conda installs",
        ),
        # an unsupported CPython for conda, named with the supported ones
        (
            {"python_env_backend": "conda", "python_env_python_version": "3.10"},
            [],
            "one of the supported CPython versions 3.11, 3.12, 3.13",
        ),
        # the replaced separate installer variables
        (
            {"python_env_conda_installer_sha256": "0" * 64},
            [],
            "python_env_conda_installer: {url: ..., sha256: ...}",
        ),
        ({"python_env_backend": "foo"}, [], "python_env_backend"),
        ({"python_env_python_version": "3.x"}, [], "python_env_python_version"),
        ({"dl_stack_target_python_version": "three"}, [], "dl_stack_target_python_version"),
        ({"model_source": "modelscope"}, [], "model_modelscope_id"),
        ({"dl_stack_fanout": "scp"}, [], "dl_stack_fanout"),
        ({}, ["-e", "tpserve_state=paused"], "tpserve_service_state"),
        ({"tpserve_service_max_batch_size": "many"}, [], "tpserve_service_max_batch_size"),
        ({"tpserve_router_max_body_bytes": "huge"}, [], "tpserve_router_max_body_bytes"),
        ({"smoketest_concurrency": "lots"}, [], "smoketest_concurrency"),
        ({"pdsh_rcmd": "telnet"}, [], "pdsh_rcmd"),
        # issue 16.1: the monitoring role (checked only when tpserve_monitoring_enabled)
        (
            {"tpserve_monitoring_enabled": True, "monitoring_prometheus_bind_address": "0.0.0.0"},
            [],
            "monitoring_expose_beyond_cluster",
        ),
        (
            {
                "tpserve_monitoring_enabled": True,
                "monitoring_node_exporter_bind_address": "0.0.0.0",
            },
            [],
            "monitoring_node_exporter_bind_address=0.0.0.0",
        ),
        (
            {"tpserve_monitoring_enabled": True, "monitoring_scrape_interval": "often"},
            [],
            "monitoring_scrape_interval=often",
        ),
        (
            {"tpserve_monitoring_enabled": True, "monitoring_scrape_timeout": "1m"},
            [],
            "monitoring_scrape_timeout=1m is longer than monitoring_scrape_interval=15s",
        ),
        ({"monitoring_prometheus_port": "ninety"}, [], "monitoring_prometheus_port"),
    ],
)
def test_bad_role_variable_stops_in_the_guardrails(
    tmp_path: Path, group_vars: dict, extra: list[str], expect: str
) -> None:
    inv = write_inventory(tmp_path / "inv", group_vars)
    run = run_playbook(tmp_path, inv, "playbooks/guardrails.yml", *extra)
    assert run.rc != 0, run.out[-3000:]
    assert expect in run.out, run.out[-3000:]
    assert_nothing_changed(run)


def test_site_stops_in_the_guardrails_before_the_first_node_task(tmp_path: Path) -> None:
    """site.yml with a conda backend lacking its sha256: the run ends in the guard-rail play, before
    the facts play (the first play that connects to a node)."""
    installer = {"url": "https://mirror.example/Miniforge3.sh", "sha256": ""}
    gv = {
        "python_env_backend": "conda",
        "python_env_python_version": "3.11",
        "python_env_conda_installer": installer,
    }
    inv = write_inventory(tmp_path / "inv", gv)
    run = run_playbook(tmp_path, inv, "site.yml")
    assert run.rc != 0
    assert "python_env_conda_installer" in run.out
    assert "PLAY [Facts | every tpserve node]" not in run.out
    assert_nothing_changed(run)
