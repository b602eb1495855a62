"""known_hosts_pending: the known_hosts entries that ansible.builtin.known_hosts would still write.

A re-run of ssh_trust used to run the known_hosts module once per node, key type and name/address
(8 serial module runs on a 4-node cluster, all reporting ok). The role now reads the master's file
once (slurp) and runs the module only for the entries this filter cannot PROVE to be in place.

An entry (name, "type key") is in place when the file has the exact line "name type key" and no
other line names that host with the same key type: then `ssh-keygen -F name` finds only lines the
module leaves alone (module: found, not replaced, unchanged). Anything this filter cannot read
like ssh-keygen would (hashed names, patterns, markers such as @cert-authority, host lists with
ports, names that differ only in case) makes every entry pending, so the module decides as before.
Pure functions, unit-tested in tests/unit/test_ssh_trust_known_hosts.py.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any


def _lines(content: str) -> list[list[str]] | None:
    """The file's entries as [hosts, type, key] (comments and blank lines dropped); None when a
    line uses a form only ssh-keygen can match (hashed, pattern, marker, [host]:port)."""
    out: list[list[str]] = []
    for raw in content.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) < 3 or fields[0].startswith(("@", "|")):
            return None
        if any(ch in fields[0] for ch in "*?![]"):
            return None
        out.append(fields[:3])
    return out


def known_hosts_pending(entries: Iterable[Mapping[str, Any]], content: Any) -> list[dict[str, Any]]:
    """entries: dicts with `name` and `key` ("type base64", as for the module's key minus the
    name). content: the file's text, or slurp's base64 `content` (with `encoding: base64`) as a
    dict, or None when the file does not exist. Returns the entries to hand to the module."""
    entries = [dict(e) for e in entries]
    if isinstance(content, Mapping):
        if "content" not in content:
            return entries
        content = base64.b64decode(content["content"]).decode("utf-8", "replace")
    if not content:
        return entries
    lines = _lines(str(content))
    if lines is None:
        return entries
    pending: list[dict[str, Any]] = []
    for entry in entries:
        name = str(entry["name"])
        ktype, _, key = str(entry["key"]).strip().partition(" ")
        key = key.strip().split()[0] if key.strip() else ""
        if name != name.lower() or not key:
            pending.append(entry)
            continue
        same_type = [f for f in lines if f[1] == ktype and name in f[0].lower().split(",")]
        if same_type == [[name, ktype, key]]:
            continue
        pending.append(entry)
    return pending


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"known_hosts_pending": known_hosts_pending}
