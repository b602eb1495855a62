#!/usr/bin/python
"""python_env's one read-only look at a node (one module run instead of eight on a re-run).

What the role would otherwise ask with getent, stat (x4) and two commands: does the service user
exist, what are the directories the role owns (and their parents) like, which version is the venv's
base interpreter, and is the env's interpreter there and which version and prefix it has. The role
acts only where an answer says something is missing or different (tasks/main.yml)."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess
from collections.abc import Callable

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: python_env_probe
short_description: Read-only state of a node for the python_env role
description:
  - Reports the service user, the owner, group and mode of the given paths, the version of the
    venv's base interpreter and the identity of the env's interpreter. Changes nothing.
options:
  user:
    description: The service user.
    type: str
    required: true
  paths:
    description: Paths to describe (missing ones are reported as missing).
    type: list
    elements: str
    default: []
  base_python:
    description: The interpreter that makes the venv (asked its version); empty to skip.
    type: str
    default: ""
  env_python:
    description: The env's interpreter (asked its version and prefix when it exists).
    type: str
    required: true
  timeout:
    description: Seconds each interpreter may take to answer.
    type: int
    default: 60
"""

RETURN = r"""
user_exists: {description: whether the service user exists, type: bool, returned: always}
paths:
  description: path -> {exists, isdir, owner, group, mode} (mode as four octal digits)
  type: dict
  returned: always
base:
  description: the base interpreter's answer as a command's (rc, stdout, stderr, msg)
  type: dict
  returned: always
env: {description: "{exists, version, prefix, error}", type: dict, returned: always}
"""

ENV_CODE = (
    "import json, sys; print(json.dumps({'version': '%d.%d.%d' % sys.version_info[:3],"
    " 'prefix': sys.prefix}))"
)
BASE_CODE = "import sys; print('%d.%d.%d' % sys.version_info[:3])"


def _name(lookup: Callable, number: int) -> str:
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def describe(path: str) -> dict:
    try:
        st = os.stat(path)
    except OSError:
        return {"exists": False, "isdir": False, "owner": "", "group": "", "mode": ""}
    return {
        "exists": True,
        "isdir": stat.S_ISDIR(st.st_mode),
        "owner": _name(pwd.getpwuid, st.st_uid),
        "group": _name(grp.getgrgid, st.st_gid),
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
    }


def run(argv: list[str], timeout: int) -> dict:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return {"rc": 127, "stdout": "", "stderr": "", "msg": str(err)}
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr, "msg": ""}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "user": {"type": "str", "required": True},
            "paths": {"type": "list", "elements": "str", "default": []},
            "base_python": {"type": "str", "default": ""},
            "env_python": {"type": "str", "required": True},
            "timeout": {"type": "int", "default": 60},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        pwd.getpwnam(p["user"])
        user_exists = True
    except KeyError:
        user_exists = False
    base = run([p["base_python"], "-c", BASE_CODE], p["timeout"]) if p["base_python"] else {}
    env: dict = {"exists": os.path.exists(p["env_python"]), "version": "", "prefix": ""}
    env["error"] = ""
    if env["exists"]:
        answer = run([p["env_python"], "-c", ENV_CODE], p["timeout"])
        try:
            env.update(json.loads(answer["stdout"].strip().splitlines()[-1]))
        except (ValueError, IndexError):
            env["error"] = (answer["stderr"] or answer["msg"] or "no output").strip()[-500:]
    module.exit_json(
        changed=False,
        user_exists=user_exists,
        paths={path: describe(path) for path in p["paths"]},
        base=base,
        env=env,
    )


if __name__ == "__main__":
    main()
