"""Which CPython each node's env will run, and what is wrong with that (python_env's interpreter
check, tasks/interpreter.yml: read-only, before the first change).

A node's interpreter is a dict {"version": "3.13", "full": "3.13.5", "python": "/usr/bin/python3",
"release": "Debian 13"}: with the venv backend the node's own python3 (python_env_venv_base_python)
makes the env; with conda the env gets python_env_python_version. The wheelhouse holds cp3XX wheels
of ONE version, so every node must have the same one, and it must be in tpserve_python_versions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# What python3 the releases tpserve meets ship (for the advice in the messages only).
RELEASE_PYTHONS = {
    "Debian 12": "3.11",
    "Debian 13": "3.13",
    "Ubuntu 22.04": "3.10",
    "Ubuntu 24.04": "3.12",
}


def _key(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in str(version).split("."))
    except ValueError:
        return (0,)


def python_env_release(facts: Mapping[str, Any]) -> str:
    """'Debian 13' / 'Ubuntu 22.04' from a node's facts ('' when unknown)."""
    dist = str(facts.get("distribution", "") or "")
    if dist == "Debian":
        return f"Debian {facts.get('distribution_major_version', '')}".strip()
    version = str(facts.get("distribution_version", "") or "")
    return f"{dist} {version}".strip()


def python_env_from_facts(facts: Mapping[str, Any]) -> dict[str, str]:
    """The interpreter Ansible runs on the node (ansible_facts.python), as an interpreter dict."""
    python = facts.get("python") or {}
    version = python.get("version") or {}
    major, minor, micro = (version.get(k, "") for k in ("major", "minor", "micro"))
    return {
        "version": f"{major}.{minor}" if major != "" else "",
        "full": f"{major}.{minor}.{micro}" if major != "" else "",
        "python": str(python.get("executable", "") or ""),
        "release": python_env_release(facts),
    }


def python_env_interpreters(
    hosts: list[str], hostvars: Mapping[str, Any], backend: str, base_python: str
) -> dict[str, dict[str, str]]:
    """Each node's interpreter: the one worked out by this run or an earlier one (the cached fact
    python_env_node_interpreter), else, for a node outside --limit on the venv backend, its facts
    when Ansible's own interpreter there is the one the venv is made from. Else left out."""
    out: dict[str, dict[str, str]] = {}
    for host in hosts:
        hv = hostvars[host]
        known = hv.get("python_env_node_interpreter")
        if known:
            out[host] = dict(known)
            continue
        facts = hv.get("ansible_facts") or {}
        if backend == "venv" and (facts.get("python") or {}).get("executable") == base_python:
            derived = python_env_from_facts(facts)
            if derived["version"]:
                out[host] = derived
    return out


def _names(hosts: list[str]) -> str:
    return ", ".join(sorted(hosts))


def _where(info: Mapping[str, str]) -> str:
    return f" ({info['release']})" if info.get("release") else ""


def _advice(supported: list[str]) -> str:
    releases = [f"{rel}: {ver}" for rel, ver in RELEASE_PYTHONS.items() if ver in supported]
    return (
        "Either set python_env_backend: conda with python_env_python_version one of "
        f"{', '.join(supported)} (conda brings its own CPython, on any release), or use a release "
        f"whose python3 is supported ({', '.join(releases)}), or point python_env_venv_base_python "
        "at a supported interpreter installed on every node."
    )


def python_env_interpreter_problems(
    interpreters: Mapping[str, Mapping[str, str]],
    supported: list[str],
    backend: str,
    requested: str = "",
) -> list[str]:
    """What stops the run, one sentence each ([] = fine): an unsupported version (naming the
    nodes, their version and release, the supported ones and what to do), a venv whose
    python_env_python_version pin differs from the node's python3, nodes that disagree."""
    supported = [str(v) for v in supported]
    problems: list[str] = []
    by_version: dict[str, list[str]] = {}
    for host, info in interpreters.items():
        by_version.setdefault(str(info.get("version", "")), []).append(host)
    table = f"CPython {', '.join(supported)} (tpserve_python_versions, group_vars/all/python.yml)"

    for version in sorted(by_version, key=_key):
        hosts = by_version[version]
        if version in supported:
            continue
        info = interpreters[sorted(hosts)[0]]
        what = (
            f"python_env_python_version={version} (conda)"
            if backend == "conda"
            else f"{info.get('python') or 'python3'} is Python {info.get('full') or version or '?'}"
        )
        problems.append(
            f"{_names(hosts)}{_where(info)}: {what}, which tpserve does not support: the lock "
            f"(app/requirements.lock) has wheels for {table} only. {_advice(supported)}"
        )

    if backend == "venv" and requested:
        wrong: dict[tuple[str, str, str], list[str]] = {}
        for host, info in interpreters.items():
            if str(info.get("version")) != str(requested):
                what = (
                    info.get("python") or "python3",
                    info.get("full") or info.get("version") or "?",
                    _where(info),
                )
                wrong.setdefault(what, []).append(host)
        for (python, version, where), hosts in sorted(wrong.items()):
            problems.append(
                f"python_env_python_version={requested}, but {python} on {_names(hosts)} is Python "
                f"{version}{where}: with python_env_backend=venv leave python_env_python_version "
                "empty (the env gets the node's own python3), or use python_env_backend=conda to "
                f"install {requested}."
            )

    if len(by_version) > 1:

        def where(version: str) -> str:  # the release of the first node with that version
            return _where(interpreters[sorted(by_version[version])[0]])

        biggest = max(len(h) for h in by_version.values())
        majority = [v for v, h in by_version.items() if len(h) == biggest]
        versions = sorted(by_version, key=_key)
        if len(majority) == 1:
            common = majority[0]
            odd = ", ".join(
                f"{_names(by_version[v])} has Python {v}{where(v)}" for v in versions if v != common
            )
            others = by_version[common]
            detail = (
                f"{odd}, while the other {len(others)} node(s) ({_names(others)}) have "
                f"{common}{where(common)}"
            )
        else:
            detail = "; ".join(f"{_names(by_version[v])}: Python {v}{where(v)}" for v in versions)
        problems.append(
            "The nodes' Python differs, and the wheelhouse holds wheels for one version: "
            f"{detail}. Give every node the same release (or the same "
            "python_env_venv_base_python), or use python_env_backend: conda, which installs "
            "python_env_python_version everywhere."
        )
    return problems


class FilterModule:
    def filters(self) -> dict:
        return {
            "python_env_release": python_env_release,
            "python_env_from_facts": python_env_from_facts,
            "python_env_interpreters": python_env_interpreters,
            "python_env_interpreter_problems": python_env_interpreter_problems,
        }
