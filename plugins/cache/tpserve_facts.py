"""Fact cache plugin `tpserve_facts`: Ansible's jsonfile cache, one directory per inventory.

The lab and the real cluster both name their nodes te1..te4. Ansible's jsonfile cache keys facts by
host name only, so with one shared `.facts/` a run against inventory/jakarta could read the lab's
cached addresses and host keys (and with `gathering = smart` not even gather again). This plugin
keeps the jsonfile format but stores each inventory's facts under
`<fact_caching_connection>/<inventory name>-<hash of its real path>/`, decided from the `-i`
sources the command was started with (or ansible.cfg's default inventory). Nothing to remember:
`ansible-playbook -i inventory/lab ...` and `-i inventory/jakarta ...` can never see each other's
facts, whoever runs them and however.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable

from ansible import constants as C
from ansible import context
from ansible.plugins.cache.jsonfile import CacheModule as JsonFileCacheModule

DOCUMENTATION = """
    name: tpserve_facts
    short_description: JSON files per host, in one directory per inventory.
    description:
        - Ansible's jsonfile fact cache, with the cache directory keyed by the inventory sources
          (C(-i)) of the run, so two inventories with the same host names never share facts.
    author: tpserve
    options:
      _uri:
        required: true
        description:
          - Base directory; each inventory gets its own subdirectory below it.
        env:
          - name: ANSIBLE_CACHE_PLUGIN_CONNECTION
        ini:
          - key: fact_caching_connection
            section: defaults
        type: path
      _prefix:
        description: User defined prefix to use when creating the JSON files
        env:
          - name: ANSIBLE_CACHE_PLUGIN_PREFIX
        ini:
          - key: fact_caching_prefix
            section: defaults
      _timeout:
        default: 86400
        description: Expiration timeout for the cache plugin data
        env:
          - name: ANSIBLE_CACHE_PLUGIN_TIMEOUT
        ini:
          - key: fact_caching_timeout
            section: defaults
        type: integer
"""


def _canonical(source: str) -> str:
    """A path source as its real absolute path; a host list ("a,b,") as it is."""
    if "," in source:
        return source
    return os.path.realpath(os.path.expanduser(source))


def inventory_cache_key(sources: Iterable[str] | str | None) -> str:
    """Directory name for the facts of a run with these inventory sources.

    Readable part: the sources' base names; unique part: a hash of their real paths, so
    `inventory/lab` and `/tmp/r1-inv/lab` (or a symlink to either) are told apart correctly.
    """
    if sources is None:
        items: list[str] = []
    elif isinstance(sources, str):
        items = [sources]
    else:
        items = [str(s) for s in sources]
    canon = [_canonical(s) for s in items if s]
    if not canon:
        return "no-inventory"
    names = []
    for path in canon:
        base = os.path.basename(path.rstrip("/")) if "," not in path else "hostlist"
        names.append(re.sub(r"[^A-Za-z0-9_.-]+", "_", base) or "root")
    digest = hashlib.sha256("\n".join(canon).encode()).hexdigest()[:10]
    return f"{'+'.join(names)[:60]}-{digest}"


def current_inventory_sources() -> list[str]:
    """The -i sources of this run, else ansible.cfg's default inventory."""
    sources = None
    try:
        sources = context.CLIARGS.get("inventory")
    except AttributeError:  # no CLI context (e.g. a library caller)
        sources = None
    if not sources:
        sources = C.DEFAULT_HOST_LIST
    if isinstance(sources, str):
        sources = [sources]
    return list(sources or [])


class CacheModule(JsonFileCacheModule):
    """jsonfile cache whose directory is <_uri>/<inventory key>."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._cache_dir = os.path.join(
            self._cache_dir, inventory_cache_key(current_inventory_sources())
        )
        self.validate_cache_connection()
