#!/usr/bin/env python3
"""Which CPython versions can the lock (app/requirements.lock) be installed on? Checks, for each
pin and each version, that the package index has a wheel for it (Linux x86_64, glibc up to
--glibc, CPython X.Y / abi3 / pure Python), honouring each file's Requires-Python and skipping
yanked files. Source-only pins that the wheelhouse builds itself (deepspeed: a pure-Python wheel
built on the controller) need an sdist whose Requires-Python admits the version.

    .venv/bin/python tests/lock/python_support.py          # the table's versions + 3.10, 3.14
    .venv/bin/python tests/lock/python_support.py --write  # and record python-support.json

Reads only the index's JSON API (PEP 691), downloads no wheel. The recorded JSON carries the
lock's sha256: tests/unit/test_python_support.py fails when the lock changed after the record, or
when tpserve_python_versions (group_vars/all/python.yml) names a version the record says fails.
Note: PyPI's torch wheels for Linux are the CUDA builds; the CPU builds live on
download.pytorch.org/whl/cpu (unreachable from the development lab), which publishes the same
cp3XX set for a release.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import yaml
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.tags import Tag, compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename
from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "app/requirements.lock"
TABLE = REPO / "group_vars/all/python.yml"
RECORD = Path(__file__).with_name("python-support.json")
SOURCE_BUILDS = {"deepspeed"}  # dl_stack_source_builds: built on the controller as py3-none-any


def pins(lock: Path) -> list[tuple[str, str]]:
    out = []
    for raw in lock.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out.append((canonicalize_name(name), version.split(";", 1)[0].strip()))
    return out


def platforms(glibc: str, arch: str) -> list[str]:
    """Every manylinux tag a node with this glibc runs (as dl_stack's wheelhouse_build.py)."""
    major, minor = (int(part) for part in glibc.split("."))
    out = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return out + [f"{name}_{arch}" for m, name in legacy.items() if m <= minor] + ["linux_" + arch]


def supported_tags(python: str, glibc: str, arch: str) -> set[Tag]:
    version = tuple(int(part) for part in python.split("."))
    plats = platforms(glibc, arch)
    abi = "cp" + python.replace(".", "")
    tags = set(cpython_tags(version, abis=[abi, "abi3", "none"], platforms=plats))
    return tags | set(compatible_tags(version, interpreter=abi, platforms=plats))


def index_files(index: str, name: str) -> list[dict]:
    request = urllib.request.Request(
        f"{index.rstrip('/')}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.load(response)["files"]


def admits(requires_python: str | None, python: str) -> bool:
    if not requires_python:
        return True
    try:
        return SpecifierSet(requires_python).contains(Version(python + ".0"))
    except (InvalidSpecifier, InvalidVersion):
        return True


def judge(name: str, version: str, files: list[dict], python: str, tags: set[Tag]) -> str:
    """'wheel: FILE' / 'sdist: FILE' when installable on this python, else 'NO: why'."""
    wanted = Version(version)
    candidates = []
    for entry in files:
        filename = entry["filename"]
        if entry.get("yanked"):
            continue
        try:
            if filename.endswith(".whl"):
                _, ver, _, file_tags = parse_wheel_filename(filename)
                kind = "wheel"
            elif name in SOURCE_BUILDS and filename.endswith((".tar.gz", ".zip")):
                _, ver = parse_sdist_filename(filename)
                file_tags = frozenset()
                kind = "sdist"
            else:
                continue
        except ValueError:
            continue
        if ver == wanted:
            candidates.append((kind, filename, file_tags, entry.get("requires-python")))
    if not candidates:
        return f"NO: {name}=={version} has no file on the index"
    for kind, filename, file_tags, requires in candidates:
        if kind == "wheel" and file_tags & tags and admits(requires, python):
            return f"wheel: {filename}"
    for kind, filename, _, requires in candidates:
        if kind == "sdist" and admits(requires, python):
            return f"sdist: {filename}"
    requires = sorted({c[3] for c in candidates if c[3]})
    return f"NO: no wheel of {name}=={version} for CPython {python}" + (
        f" (Requires-Python {', '.join(requires)})" if requires else ""
    )


def table_versions() -> list[str]:
    return [str(v) for v in yaml.safe_load(TABLE.read_text())["tpserve_python_versions"]]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--python", action="append", default=[], help="X.Y (repeatable)")
    parser.add_argument(
        "--glibc", default="2.35", help="oldest glibc of the nodes (Ubuntu 22.04: 2.35)"
    )
    parser.add_argument("--arch", default="x86_64")
    parser.add_argument("--index-url", default="https://pypi.org/simple")
    parser.add_argument("--write", action="store_true", help=f"record the result in {RECORD.name}")
    args = parser.parse_args()
    versions = args.python or sorted(
        set(table_versions()) | {"3.10", "3.14"}, key=lambda v: tuple(map(int, v.split(".")))
    )
    lock_pins = pins(LOCK)
    results: dict[str, dict[str, str]] = {v: {} for v in versions}
    tags = {v: supported_tags(v, args.glibc, args.arch) for v in versions}
    for name, version in lock_pins:
        files = index_files(args.index_url, name)
        for python in versions:
            results[python][f"{name}=={version}"] = judge(
                name, version, files, python, tags[python]
            )
    summary = {}
    for python in versions:
        bad = {pin: why for pin, why in results[python].items() if why.startswith("NO")}
        summary[python] = "ok" if not bad else f"{len(bad)} pin(s) without a wheel"
        print(f"CPython {python}: {summary[python]}")
        for pin, why in bad.items():
            print(f"  {pin}: {why}")
    if args.write:
        record = {
            "checked": datetime.now(UTC).strftime("%Y-%m-%d"),
            "index": args.index_url,
            "glibc": args.glibc,
            "arch": args.arch,
            "lock_sha256": hashlib.sha256(LOCK.read_bytes()).hexdigest(),
            "summary": summary,
            "results": results,
        }
        RECORD.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"recorded in {RECORD.relative_to(REPO)}")
    failing = [v for v in table_versions() if v in summary and summary[v] != "ok"]
    if failing:
        print(
            f"tpserve_python_versions ({TABLE.relative_to(REPO)}) lists {', '.join(failing)}, "
            "which the lock cannot be installed on: drop them or change the lock.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
