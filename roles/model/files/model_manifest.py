#!/usr/bin/env python3
"""The model directory's manifest: MANIFEST.sha256 (`sha256sum` format, sorted relative paths).

    model_manifest.py write DIR            write the manifest of what DIR holds now
    model_manifest.py check DIR [--remove-bad]
                                           compare DIR with its manifest; optionally delete
                                           files that differ so a re-fetch replaces them

Prints one JSON object. Bookkeeping (the manifest itself, the source stamp, hub caches) is
not part of the model and is skipped. `sha256sum -c MANIFEST.sha256` reads the same file.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path

MANIFEST = "MANIFEST.sha256"
SKIP_FILES = {MANIFEST, ".tpserve-source.json"}
SKIP_DIRS = {".cache", ".git", "__pycache__"}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_files(root: Path) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in filenames:
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel not in SKIP_FILES and not name.endswith(".lock"):
                found.append(rel)
    return sorted(found)


def read_manifest(root: Path) -> dict[str, str] | None:
    try:
        text = (root / MANIFEST).read_text()
    except OSError:
        return None
    entries = {}
    for line in text.splitlines():
        if line.strip():
            digest, rel = line.split(None, 1)
            entries[rel.lstrip("*")] = digest
    return entries


def write(root: Path) -> dict[str, object]:
    files = model_files(root)
    if not files:
        return {"changed": False, "ok": False, "error": f"{root} holds no model files"}
    text = "".join(f"{sha256_file(root / rel)}  {rel}\n" for rel in files)
    old = (root / MANIFEST).read_text() if (root / MANIFEST).is_file() else None
    if old != text:
        tmp = root / (MANIFEST + ".tmp")
        tmp.write_text(text)
        tmp.replace(root / MANIFEST)
    return {"changed": old != text, "ok": True, "files": len(files)}


def check(root: Path, remove_bad: bool) -> dict[str, object]:
    entries = read_manifest(root)
    if entries is None:
        return {
            "ok": False,
            "manifest": False,
            "bad": [],
            "missing": [],
            "extra": [],
            "removed": [],
        }
    missing, bad = [], []
    for rel, digest in sorted(entries.items()):
        path = root / rel
        if not path.is_file():
            missing.append(rel)
        elif sha256_file(path) != digest:
            bad.append(rel)
    extra = [rel for rel in model_files(root) if rel not in entries]
    removed = []
    if remove_bad:
        for rel in bad:
            (root / rel).unlink()
            removed.append(rel)
    ok = not (missing or bad)
    return {
        "ok": ok,
        "manifest": True,
        "files": len(entries),
        "bad": bad,
        "missing": missing,
        "extra": extra,
        "removed": removed,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["write", "check"])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--remove-bad", action="store_true")
    args = parser.parse_args()
    result = write(args.dir) if args.action == "write" else check(args.dir, args.remove_bad)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
