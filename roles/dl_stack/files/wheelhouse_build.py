#!/usr/bin/env python3
"""Build the tpserve wheelhouse ONCE on the controller and print a JSON result.

The wheelhouse holds a wheel for every line of the lock (binary wheels downloaded for the
*nodes'* platform, source-only packages such as deepspeed built with --no-build-isolation
against the controller's interpreter) plus the tpserve wheel built from app/.

--extra-requirement adds pinned lines on top of the lock (dl_stack passes the CUDA-only ones, such
as deepspeed-kernels, on CUDA clusters); they are downloaded like lock lines and appended to the
wheelhouse's copy of the lock, which is what the nodes install and verify against.

A key (sha256 over the lock, the app's wheel inputs (pyproject.toml, README.md, src/) and every
setting, extra requirements included) is written to <out>/wheelhouse.json; when it matches and
every listed file is intact nothing is done (changed=false). With --check nothing is built: the
result only says whether it would be.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

STATE_FILE = "wheelhouse.json"
SUMS_FILE = "SHA256SUMS"
LOCK_COPY = "requirements.lock"
SKIP_DIRS = {
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "build",
    "dist",
    ".venv",
    ".mypy_cache",
}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tree_digest(root: Path) -> str:
    """sha256 over the relative paths and contents of the app's source files."""
    digest = hashlib.sha256()
    if not root.is_dir():
        return "absent"
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")
        )
        for name in sorted(filenames):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = Path(dirpath) / name
            digest.update(str(path.relative_to(root)).encode() + b"\0" + sha256_file(path).encode())
    return digest.hexdigest()


def requirement_name(line: str) -> str:
    return re.split(r"[<>=!~\[; ]", line, maxsplit=1)[0].strip().lower().replace("_", "-")


def lock_lines(lock: Path) -> list[str]:
    lines = []
    for raw in lock.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line)
    return lines


def node_lock(lock: Path, extras: list[str]) -> str:
    """The lock the nodes install: the app's lock, plus the extra lines when there are any."""
    text = lock.read_text()
    if not extras:
        return text
    if text and not text.endswith("\n"):
        text += "\n"
    return (
        text
        + "# dl_stack: extra requirements for this cluster's accelerator\n"
        + "".join(f"{line}\n" for line in extras)
    )


def platforms(args: argparse.Namespace) -> list[str]:
    """Every manylinux tag a node with glibc --glibc can run (pip does not expand manylinux_2_X)."""
    out = list(args.platform)
    if args.glibc:
        major, minor = (int(part) for part in args.glibc.split("."))
        out += [f"manylinux_{major}_{m}_{args.arch}" for m in range(minor, 4, -1)]
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        out += [f"{name}_{args.arch}" for m, name in legacy.items() if m <= minor]
    return out


def index_args(args: argparse.Namespace) -> list[str]:
    out = ["--index-url", args.index_url] if args.index_url else []
    for url in args.extra_index_url:
        out += ["--extra-index-url", url]
    for link in args.find_links:
        out += ["--find-links", link]
    return out


def run(cmd: list[str], log: list[str]) -> None:
    log.append(" ".join(cmd))
    print("+ " + " ".join(cmd), file=sys.stderr, flush=True)
    subprocess.run(cmd, check=True, stdout=sys.stderr, stderr=sys.stderr)


def pip_wheel(pip: list[str], wheel_dir: Path, *args: str) -> list[str]:
    """`pip wheel ARGS` into wheel_dir: no dependencies (the lock lists them) and never an
    isolated build (an isolated build would fetch its own (CUDA) torch)."""
    return [
        *pip,
        "wheel",
        "--progress-bar",
        "off",
        "--no-deps",
        "--no-build-isolation",
        "--wheel-dir",
        str(wheel_dir),
        *args,
    ]


def current_state(out: Path) -> dict:
    try:
        return json.loads((out / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def intact(out: Path, state: dict) -> bool:
    files = state.get("files", {})
    return bool(files) and all(
        (out / name).is_file() and sha256_file(out / name) == sha for name, sha in files.items()
    )


def build(args: argparse.Namespace, key: str, lines: list[str], log: list[str]) -> dict:
    out = Path(args.out)
    staging = out.parent / (out.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    source_names = {name.lower() for name in args.source_build}
    binary = [line for line in lines if requirement_name(line) not in source_names]
    if args.torch_spec:
        binary = [args.torch_spec if requirement_name(line) == "torch" else line for line in binary]
    sources = [line for line in lines if requirement_name(line) in source_names]
    binary_file = staging / "binary-requirements.txt"
    binary_file.write_text("\n".join(binary) + "\n")
    pip = [args.pip_python, "-m", "pip"]
    abi = "cp" + args.python_version.replace(".", "")
    # abi3 (stable ABI) and none wheels are compatible too; naming only cp3XX would exclude them.
    target = [
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        args.python_version,
        "--abi",
        abi,
        "--abi",
        "abi3",
        "--abi",
        "none",
    ]
    for platform in platforms(args):
        target += ["--platform", platform]
    # Dependencies are resolved (a CUDA torch pulls its nvidia-* wheels); the lock's pins win.
    run(
        [
            *pip,
            "download",
            "--progress-bar",
            "off",
            "--dest",
            str(staging),
            *target,
            *index_args(args),
            "-r",
            str(binary_file),
        ],
        log,
    )
    binary_file.unlink()
    for spec in sources:
        run(pip_wheel(pip, staging, *index_args(args), spec), log)
    app_wheel = ""
    app_dir = Path(args.app_dir)
    if (app_dir / "pyproject.toml").is_file():
        before = set(staging.glob("*.whl"))
        run(pip_wheel(pip, staging, str(app_dir.resolve())), log)
        built = sorted(set(staging.glob("*.whl")) - before)
        app_wheel = built[-1].name if built else ""
        # setuptools leaves build/ and *.egg-info next to the sources: not ours to keep.
        shutil.rmtree(app_dir / "build", ignore_errors=True)
    (staging / LOCK_COPY).write_text(node_lock(Path(args.lock), args.extra_requirement))
    files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
    (staging / SUMS_FILE).write_text("".join(f"{sha}  {name}\n" for name, sha in files.items()))
    state = {
        "key": key,
        "app_wheel": app_wheel,
        "python_version": args.python_version,
        "platforms": platforms(args),
        "files": files,
    }
    (staging / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    old = out.parent / (out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    staging.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return state


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--lock", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--app-dir", required=True)
    parser.add_argument("--python-version", required=True)
    parser.add_argument("--platform", action="append", default=[], help="extra pip platform tags")
    parser.add_argument(
        "--glibc",
        default="",
        help="nodes' glibc, e.g. 2.35: all manylinux tags up to it",
    )
    parser.add_argument("--arch", default="x86_64")
    parser.add_argument("--index-url", default="")
    parser.add_argument("--extra-index-url", action="append", default=[])
    parser.add_argument("--find-links", action="append", default=[])
    parser.add_argument("--source-build", action="append", default=[])
    parser.add_argument("--torch-spec", default="")
    parser.add_argument(
        "--extra-requirement",
        action="append",
        default=[],
        help="pinned requirement added to the lock (repeatable), e.g. deepspeed-kernels==...",
    )
    parser.add_argument("--pip-python", default=sys.executable)
    parser.add_argument("--check", action="store_true", help="report only, build nothing")
    args = parser.parse_args()

    lock = Path(args.lock)
    lines = lock_lines(lock) + [line.strip() for line in args.extra_requirement if line.strip()]
    settings = {k: v for k, v in vars(args).items() if k not in {"check", "out", "pip_python"}}
    # No extras (CPU clusters): the key stays what it was before the option existed.
    if not args.extra_requirement:
        del settings["extra_requirement"]
    settings["lock_sha256"] = sha256_file(lock)
    # Only what goes into the tpserve wheel: build config + sources (not tests or caches).
    app_dir = Path(args.app_dir)
    app_build = [app_dir / "pyproject.toml", app_dir / "README.md"]
    settings["app_digest"] = tree_digest(app_dir / "src") + "".join(
        sha256_file(p) for p in app_build if p.is_file()
    )
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
    out = Path(args.out)
    state = current_state(out)
    result = {
        "key": key,
        "out": str(out),
        "app_present": (Path(args.app_dir) / "pyproject.toml").is_file(),
    }
    if state.get("key") == key and intact(out, state):
        result.update(
            changed=False,
            app_wheel=state.get("app_wheel", ""),
            files=len(state["files"]),
        )
    elif args.check:
        result.update(changed=True, app_wheel="", files=0, would_build=True)
    else:
        log: list[str] = []
        state = build(args, key, lines, log)
        result.update(
            changed=True,
            app_wheel=state["app_wheel"],
            files=len(state["files"]),
            commands=log,
        )
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
