#!/usr/bin/env python3
"""The model directory's manifest: MANIFEST.sha256 (`sha256sum` format, sorted relative paths)
and MANIFEST.stat.json (size and mtime of every file when the manifest was written).

    model_manifest.py write DIR            write the manifest of what DIR holds now
    model_manifest.py check DIR [--remove-bad] [--quick]
                                           compare DIR with its manifest; optionally delete
                                           files that differ so a re-fetch replaces them.
                                           --quick: a file whose size and mtime equal the
                                           recorded ones is taken as is (no read); others are
                                           hashed. Deep (the default) hashes every file.

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
STAT = "MANIFEST.stat.json"
SKIP_FILES = {MANIFEST, STAT, ".tpserve-source.json"}
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
        _replace(root / MANIFEST, text)
    stats = json.dumps(stat_of(root, files), sort_keys=True)
    old_stats = (root / STAT).read_text() if (root / STAT).is_file() else None
    if old_stats != stats:
        _replace(root / STAT, stats)
    return {"changed": old != text or old_stats != stats, "ok": True, "files": len(files)}


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def stat_of(root: Path, files: list[str]) -> dict[str, list[int]]:
    out = {}
    for rel in files:
        st = (root / rel).stat()
        out[rel] = [st.st_size, st.st_mtime_ns]
    return out


def check(root: Path, remove_bad: bool, quick: bool = False) -> dict[str, object]:
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
    recorded: dict[str, list[int]] = {}
    if quick:
        try:
            recorded = json.loads((root / STAT).read_text())
        except (OSError, ValueError):
            recorded = {}  # no stat record: every file is hashed
    missing, bad, hashed = [], [], 0
    for rel, digest in sorted(entries.items()):
        path = root / rel
        if not path.is_file():
            missing.append(rel)
            continue
        st = path.stat()
        if quick and recorded.get(rel) == [st.st_size, st.st_mtime_ns]:
            continue  # unchanged since the manifest was written (or since rsync -a copied it)
        hashed += 1
        if sha256_file(path) != digest:
            bad.append(rel)
    extra = [rel for rel in model_files(root) if rel not in entries]
    removed = []
    if remove_bad:
        for rel in bad:
            (root / rel).unlink()
            removed.append(rel)
    ok = not (missing or bad)
    if quick and not recorded and ok and remove_bad:
        # a manifest from before stat records: every file was just hashed and matched, so record
        # their size and mtime now (the next quick check reads nothing)
        _replace(root / STAT, json.dumps(stat_of(root, sorted(entries)), sort_keys=True))
    return {
        "ok": ok,
        "manifest": True,
        "mode": "quick" if quick else "deep",
        "hashed": hashed,
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
    parser.add_argument(
        "--quick", action="store_true", help="trust files with their recorded size and mtime"
    )
    args = parser.parse_args()
    if args.action == "write":
        result = write(args.dir)
    else:
        result = check(args.dir, args.remove_bad, args.quick)
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
