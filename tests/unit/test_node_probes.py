"""The read-only probe modules of python_env, dl_stack and tpserve_service (one module run instead
of many on a re-run, issue 16.3) and the rule that lets tpserve_service skip a write: the probe's
sha1 of a file that ansible.builtin.template wrote equals the sha1 of lookup('template') of the
same template, so an unchanged file is recognised without a module run. Runs the real modules on
this machine (local connection), in tmp_path."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import REPO, load_module, run_playbook, write_inventory

differs = load_module(
    "tpserve_service_filters", REPO / "roles/tpserve_service/filter_plugins/probe.py"
).tpserve_service_differs

WANT = {"owner": "root", "group": "root", "mode": "0644"}
SEEN = {"exists": True, "isdir": False, "islnk": False, **WANT}


def test_differs_only_when_something_would_change() -> None:
    import hashlib

    sha1 = hashlib.sha1(b"a = 1\n").hexdigest()
    assert not differs({**SEEN, "sha1": sha1}, WANT, "a = 1\n")
    assert differs({**SEEN, "sha1": sha1}, WANT, "a = 2\n")  # other bytes
    assert differs({**SEEN, "sha1": sha1}, {**WANT, "mode": "0600"}, "a = 1\n")  # other mode
    assert differs({**SEEN, "sha1": sha1, "owner": "tpserve"}, WANT, "a = 1\n")
    assert differs({}, WANT, "a = 1\n")  # not probed
    assert differs({**SEEN, "exists": False}, WANT, "a = 1\n")
    assert differs({**SEEN, "islnk": True, "sha1": ""}, WANT, "a = 1\n")  # a symlink there
    empty = hashlib.sha1(b"").hexdigest()
    assert not differs({**SEEN, "sha1": empty}, WANT, None)  # lookup('template') of "" is None
    assert differs({**SEEN, "sha1": empty}, WANT, "a = 1\n")
    assert not differs({**SEEN, "isdir": True}, WANT, "directory")
    assert differs({**SEEN, "isdir": False}, WANT, "directory")  # a file where a dir should be


TEMPLATE = """# {{ ansible_managed }}
# a unit-like file with blocks, a loop and a trailing newline
{% for n in numbers %}
value_{{ n }} = {{ n * 2 }}
{% endfor %}
{% if flag %}
flag = on
{% endif %}
last = "{{ word }}"
"""

PLAY = """---
- name: Probes on this machine
  hosts: te1
  gather_facts: false
  vars:
    numbers: [1, 2, 3]
    flag: true
    word: done
    out: "{{ tmp }}/out"
  tasks:
    - name: A file written by the template module
      ansible.builtin.template:
        src: "{{ tmp }}/t.j2"
        dest: "{{ out }}/f.conf"
        mode: "0640"
      check_mode: false

    - name: A file that renders empty (like secret.env without an API key)
      ansible.builtin.template:
        src: "{{ tmp }}/empty.j2"
        dest: "{{ out }}/empty.env"
        mode: "0600"
      check_mode: false

    - name: The service probe
      tpserve_service_probe:
        paths: ["{{ out }}/f.conf", "{{ out }}", "{{ out }}/missing", "{{ out }}/link",
                "{{ out }}/empty.env"]
        unit_dir: "{{ out }}"
        unit_patterns: ["*.conf"]
        marker_file: "{{ out }}/f.conf"
        marker_text: flag = on
      register: svc

    - name: The python_env probe
      python_env_probe:
        user: "{{ lookup('ansible.builtin.env', 'USER') | default('root', true) }}"
        paths: ["{{ out }}", "{{ out }}/missing"]
        base_python: "{{ python }}"
        env_python: "{{ python }}"
      register: pe

    - name: The dl_stack probe
      dl_stack_probe:
        python: "{{ python }}"
        markers: ["{{ out }}/f.conf", "{{ out }}/missing"]
        lock_file: "{{ out }}/f.conf"
        wheelhouse_dir: "{{ out }}/missing"
      register: dl

    - name: What they saw
      ansible.builtin.copy:
        content: "{{ {'svc': svc, 'pe': pe, 'dl': dl, 'rendered_sha1': rendered | hash('sha1'),
                      'differs': seen | tpserve_service_differs(want, rendered),
                      'differs_empty': svc.paths[out ~ '/empty.env'] | tpserve_service_differs(
                          want_0600, lookup('ansible.builtin.template', empty_j2))}
                   | to_json }}"
        dest: "{{ tmp }}/seen.json"
        mode: "0644"
      vars:
        rendered: "{{ lookup('ansible.builtin.template', tmp ~ '/t.j2') }}"
        empty_j2: "{{ tmp }}/empty.j2"
        want_0600: "{{ want | combine({'mode': '0600'}) }}"
        seen: "{{ svc.paths[out ~ '/f.conf'] }}"
        want: {owner: "{{ seen.owner }}", group: "{{ seen.group }}", mode: "0640"}
      check_mode: false
"""


@pytest.fixture
def seen(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    (tmp_path / "t.j2").write_text(TEMPLATE)
    (tmp_path / "empty.j2").write_text("{% if word | length > 99 %}\nK={{ word }}\n{% endif %}\n")
    (tmp_path / "out").mkdir()
    os.symlink("f.conf", tmp_path / "out" / "link")
    (tmp_path / "play.yml").write_text(PLAY)
    inv = write_inventory(
        tmp_path / "inv", {"tmp": str(tmp_path), "python": sys.executable}, nodes=1
    )
    libraries = [
        REPO / "roles" / r / "library" for r in ("tpserve_service", "python_env", "dl_stack")
    ]
    monkeypatch.setenv("ANSIBLE_LIBRARY", ":".join(map(str, libraries)))
    monkeypatch.setenv("ANSIBLE_FILTER_PLUGINS", str(REPO / "roles/tpserve_service/filter_plugins"))
    # --check: the probes must answer in a dry run too (the writes above opt out of it)
    run = run_playbook(tmp_path, inv, str(tmp_path / "play.yml"))
    assert run.rc == 0, run.out[-3000:]
    return json.loads((tmp_path / "seen.json").read_text())


def test_a_templated_file_is_recognised_without_a_write(seen: dict, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    f = seen["svc"]["paths"][out + "/f.conf"]
    assert f["exists"] and not f["isdir"] and f["mode"] == "0640"
    assert f["sha1"] == seen["rendered_sha1"]  # template module's bytes == lookup's
    assert seen["differs"] is False
    assert seen["differs_empty"] is False  # an empty file is recognised too
    assert seen["svc"]["paths"][out]["isdir"]
    assert seen["svc"]["paths"][out + "/missing"]["exists"] is False
    link = seen["svc"]["paths"][out + "/link"]
    assert link["islnk"] and link["lnk_target"] == "f.conf"
    assert seen["svc"]["units"] == ["f.conf"] and seen["svc"]["marker"] is True
    assert seen["svc"]["changed"] is False


def test_the_env_and_stack_probes_report_without_changing(seen: dict, tmp_path: Path) -> None:
    out = str(tmp_path / "out")
    version = ".".join(map(str, sys.version_info[:3]))
    pe = seen["pe"]
    assert pe["user_exists"] and pe["changed"] is False
    assert pe["base"]["rc"] == 0 and pe["base"]["stdout"].strip() == version
    assert pe["env"]["exists"] and pe["env"]["version"] == version
    assert pe["env"]["prefix"] == sys.prefix
    assert pe["paths"][out]["isdir"] and pe["paths"][out + "/missing"] == {
        "exists": False, "isdir": False, "owner": "", "group": "", "mode": ""
    }  # fmt: skip
    dl = seen["dl"]
    assert dl["python_exists"] and dl["wheelhouse_exists"] is False
    assert dl["markers"][out + "/missing"] == ""
    assert dl["markers"][out + "/f.conf"].endswith('last = "done"')
    assert dl["lock"]["sha1"] == seen["rendered_sha1"] and dl["changed"] is False
