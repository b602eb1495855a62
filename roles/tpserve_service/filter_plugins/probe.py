"""Does a file or directory the role writes differ from what the probe saw (tasks/plan.yml,
library/tpserve_service_probe.py)? Where it does not, configure.yml skips the write: a serve.yml
re-run then costs no module run per file (a template or copy that finds nothing to do costs two)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

DIRECTORY = "directory"


def tpserve_service_differs(
    seen: Mapping[str, Any], want: Mapping[str, Any], content: str | None
) -> bool:
    """True when a write is due: `seen` (the probe's description of the path, {} when unknown) is
    missing, of another kind, owner, group or mode than `want`, or (files) holds other bytes than
    `content` ('directory' for a directory)."""
    if not seen or not seen.get("exists"):
        return True
    if any(str(seen.get(key, "")) != str(want[key]) for key in ("owner", "group", "mode")):
        return True
    if content == DIRECTORY:
        return not seen.get("isdir") or bool(seen.get("islnk"))
    if seen.get("isdir") or seen.get("islnk"):
        return True
    # lookup('template') of a template that renders nothing gives None (ansible-core 2.19)
    text = "" if content is None else str(content)
    return seen.get("sha1") != hashlib.sha1(text.encode("utf-8")).hexdigest()


class FilterModule:
    def filters(self) -> dict:
        return {"tpserve_service_differs": tpserve_service_differs}
