#!/usr/bin/python
"""tpserve_service's one read-only look at a node (one module run instead of about fifteen on a
serve.yml re-run): what the given paths are (owner, group, mode, a regular file's sha1, a symlink's
target), which tpserve units are installed, and whether a file holds a marker line (the replicas
front door's HAProxy configuration). The role writes only what differs."""

from __future__ import annotations

import fnmatch
import grp
import hashlib
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: tpserve_service_probe
short_description: Read-only state of a node for the tpserve_service role
description:
  - Describes paths (no following of a final symlink), lists unit files matching patterns and
    tells whether a file contains a marker text. Changes nothing.
options:
  paths: {description: Paths to describe., type: list, elements: str, default: []}
  unit_dir: {description: Directory of the unit files., type: str, default: /etc/systemd/system}
  unit_patterns:
    description: fnmatch patterns of unit file names.
    type: list
    elements: str
    default: []
  marker_file: {description: File to search for marker_text., type: str, default: ""}
  marker_text: {description: Text to look for in marker_file., type: str, default: ""}
"""

RETURN = r"""
paths:
  description: path -> {exists, isdir, islnk, lnk_target, owner, group, mode, sha1}
  type: dict
  returned: always
units: {description: names of the matching unit files, type: list, returned: always}
marker: {description: whether marker_file contains marker_text, type: bool, returned: always}
"""

MAX_HASHED = 1 << 20  # configuration files only


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def describe(path: str) -> dict:
    out = {"exists": False, "isdir": False, "islnk": False, "lnk_target": "", "owner": "",
           "group": "", "mode": "", "sha1": ""}  # fmt: skip
    try:
        st = os.lstat(path)
    except OSError:
        return out
    out.update(exists=True, owner=_owner(st.st_uid), group=_group(st.st_gid))
    out["mode"] = f"{stat.S_IMODE(st.st_mode):04o}"
    if stat.S_ISLNK(st.st_mode):
        out.update(islnk=True, lnk_target=os.readlink(path))
    elif stat.S_ISDIR(st.st_mode):
        out["isdir"] = True
    elif stat.S_ISREG(st.st_mode) and st.st_size <= MAX_HASHED:
        try:
            with open(path, "rb") as handle:
                out["sha1"] = hashlib.sha1(handle.read()).hexdigest()  # what copy/template compare
        except OSError:
            pass
    return out


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "paths": {"type": "list", "elements": "str", "default": []},
            "unit_dir": {"type": "str", "default": "/etc/systemd/system"},
            "unit_patterns": {"type": "list", "elements": "str", "default": []},
            "marker_file": {"type": "str", "default": ""},
            "marker_text": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        names = sorted(os.listdir(p["unit_dir"]))
    except OSError:
        names = []
    units = [
        name
        for name in names
        if any(fnmatch.fnmatchcase(name, pat) for pat in p["unit_patterns"])
        and os.path.isfile(os.path.join(p["unit_dir"], name))
    ]
    marker = False
    if p["marker_file"] and p["marker_text"]:
        try:
            with open(p["marker_file"], encoding="utf-8", errors="replace") as handle:
                marker = p["marker_text"] in handle.read()
        except OSError:
            marker = False
    module.exit_json(
        changed=False,
        paths={path: describe(path) for path in p["paths"]},
        units=units,
        marker=marker,
    )


if __name__ == "__main__":
    main()
