#!/usr/bin/python
"""dl_stack's one read-only look at a node before it decides whether to install (one module run
instead of six on a re-run): is the env's interpreter there, the stamp of the last install, the
marker of the last import check, the lock kept next to the env (sha1, owner, group, mode) and
whether a wheelhouse copy is left on the node. The role acts only where an answer says so."""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: dl_stack_probe
short_description: Read-only state of a node for the dl_stack role
description:
  - Reports whether the interpreter exists, the text of small marker files, the sha1 and
    attributes of the node's copy of the lock and whether the node's wheelhouse directory exists.
    Changes nothing.
options:
  python: {description: The env's interpreter., type: str, required: true}
  markers:
    description: Small text files to read (missing ones read as an empty string).
    type: list
    elements: str
    default: []
  lock_file: {description: The node's copy of the lock., type: str, required: true}
  wheelhouse_dir: {description: The node's wheelhouse directory., type: str, required: true}
"""

RETURN = r"""
python_exists: {description: whether the interpreter exists, type: bool, returned: always}
markers:
  description: path -> its text (stripped; empty when missing)
  type: dict
  returned: always
lock:
  description: "{exists, sha1, owner, group, mode} of the node's lock copy"
  type: dict
  returned: always
wheelhouse_exists:
  description: whether the wheelhouse directory exists
  type: bool
  returned: always
"""

MAX_MARKER = 4096


def read_marker(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read(MAX_MARKER).strip()
    except OSError:
        return ""


def describe_lock(path: str) -> dict:
    try:
        st = os.stat(path)
        with open(path, "rb") as handle:
            sha1 = hashlib.sha1(handle.read()).hexdigest()  # what copy compares
    except OSError:
        return {"exists": False, "sha1": "", "owner": "", "group": "", "mode": ""}
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    mode = f"{stat.S_IMODE(st.st_mode):04o}"
    return {"exists": True, "sha1": sha1, "owner": owner, "group": group, "mode": mode}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "python": {"type": "str", "required": True},
            "markers": {"type": "list", "elements": "str", "default": []},
            "lock_file": {"type": "str", "required": True},
            "wheelhouse_dir": {"type": "str", "required": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    module.exit_json(
        changed=False,
        python_exists=os.path.exists(p["python"]),
        markers={path: read_marker(path) for path in p["markers"]},
        lock=describe_lock(p["lock_file"]),
        wheelhouse_exists=os.path.isdir(p["wheelhouse_dir"]),
    )


if __name__ == "__main__":
    main()
