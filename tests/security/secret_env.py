#!/usr/bin/env python3
"""Static check: no task hands a secret over through `environment:`.

Ansible writes a task's `environment:` into the shell command line it runs (remote, or local for
delegate_to: localhost), so the value is visible in `ps` while the task runs. Secrets go in a 0600
file instead (model: HF_TOKEN_PATH; smoketest: --api-key-file).

    secret_env.py PATH...   (YAML files or directories searched for *.yml / *.yaml)

Flags, in every mapping that has an `environment` key (tasks, blocks, plays) and in role variables
named *_env:
  - a variable name that looks like a secret (API_KEY, TOKEN, PASSWORD, SECRET), unless it names a
    file (…_PATH, …_FILE), also as a quoted key inside a Jinja expression;
  - a value that templates a secret variable (…api_key…, …token…, …password…, …secret…), unless
    the variable names a file or directory (…_file, …_path, …_dir).
Prints one line per finding; exit 1 if any, 0 otherwise.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

YAML_SUFFIXES = {".yml", ".yaml"}
SECRET = r"(api_?key|token|password|passwd|secret)"
FILE_SUFFIX = re.compile(r"(_path|_file|_dir)$", re.I)
SECRET_NAME = re.compile(SECRET, re.I)
# 'NAME': inside an expression (a dict literal's key).
QUOTED_KEY = re.compile(r"""['"]([A-Za-z0-9_]+)['"]\s*:""")
# A variable used as a value: after `{{` or a dict-literal `:`; filters and tests are skipped.
TEMPLATED_VAR = re.compile(r"(?:\{\{-?|:)\s*([A-Za-z_][A-Za-z0-9_]*)")


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads Ansible's tags (!vault, !unsafe) as plain values."""


def _any_tag(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.ScalarNode):
        return loader.construct_scalar(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_mapping(node)  # type: ignore[arg-type]


_Loader.add_multi_constructor("!", _any_tag)


def secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name)) and not FILE_SUFFIX.search(name)


def secret_vars(text: str) -> list[str]:
    return [v for v in TEMPLATED_VAR.findall(text) if secret_name(v)]


def findings_in_env(env: Any) -> list[str]:
    out: list[str] = []
    if isinstance(env, dict):
        for key, value in env.items():
            if secret_name(str(key)):
                out.append(f"variable {key} looks like a secret")
            out += [f"{key} templates {v}" for v in secret_vars(str(value))]
    elif isinstance(env, str):
        out += [f"key '{k}' looks like a secret" for k in QUOTED_KEY.findall(env) if secret_name(k)]
        out += [f"templates {v}" for v in secret_vars(env)]
    elif isinstance(env, list):
        for item in env:
            out += findings_in_env(item)
    return out


def walk(node: Any, where: str) -> Iterator[str]:
    if isinstance(node, dict):
        here = f"{where} / {node['name']}" if isinstance(node.get("name"), str) else where
        if "environment" in node:
            for finding in findings_in_env(node["environment"]):
                yield f"{here}: environment: {finding}"
        for value in node.values():
            yield from walk(value, here)
    elif isinstance(node, list):
        for item in node:
            yield from walk(item, where)


def role_env_vars(doc: Any, where: str) -> Iterator[str]:
    if isinstance(doc, dict):
        for name, value in doc.items():
            if str(name).endswith("_env"):
                for finding in findings_in_env(value):
                    yield f"{where}: {name}: {finding}"


def yaml_files(paths: list[str]) -> Iterator[Path]:
    """The *.yml / *.yaml files among PATHS and under the directories among them."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.suffix in YAML_SUFFIXES and f.is_file())
        elif p.suffix in YAML_SUFFIXES and p.is_file():
            yield p


def main(argv: list[str]) -> int:
    bad: list[str] = []
    for f in yaml_files(argv):
        try:
            text = f.read_text(encoding="utf-8")
            docs = list(yaml.load_all(text, Loader=_Loader))  # a SafeLoader: no code runs
        except yaml.YAMLError as exc:
            bad.append(f"{f}: not readable as YAML: {exc}")
            continue
        for doc in docs:
            bad += walk(doc, str(f))
            if f.parent.name in {"defaults", "vars"}:
                bad += role_env_vars(doc, str(f))
    print("\n".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
