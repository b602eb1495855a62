"""roles/model/files/model_manifest.py: write, check, corruption and truncation detection."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "roles" / "model" / "files" / "model_manifest.py"


def run(*args: str) -> dict:
    cmd = [sys.executable, str(SCRIPT), *args]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_model(root: Path) -> None:
    (root / "sub").mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "qwen2"}\n')
    (root / "sub" / "model.safetensors").write_bytes(bytes(range(256)) * 64)
    (root / ".cache").mkdir()
    (root / ".cache" / "ignored").write_text("hub bookkeeping\n")
    (root / ".tpserve-source.json").write_text("{}\n")


def test_write_is_sha256sum_format_and_idempotent(tmp_path: Path) -> None:
    make_model(tmp_path)
    assert run("write", str(tmp_path)) == {"changed": True, "files": 2, "ok": True}
    assert run("write", str(tmp_path))["changed"] is False
    lines = (tmp_path / "MANIFEST.sha256").read_text().splitlines()
    blob = (tmp_path / "sub" / "model.safetensors").read_bytes()
    config_sha = hashlib.sha256((tmp_path / "config.json").read_bytes()).hexdigest()
    assert lines == [
        f"{config_sha}  config.json",
        f"{hashlib.sha256(blob).hexdigest()}  sub/model.safetensors",
    ]
    # coreutils reads the same file
    subprocess.run(["sha256sum", "--quiet", "-c", "MANIFEST.sha256"], cwd=tmp_path, check=True)


def test_check_without_manifest_is_not_ok(tmp_path: Path) -> None:
    make_model(tmp_path)
    result = run("check", str(tmp_path))
    assert result["ok"] is False and result["manifest"] is False


def test_corrupted_and_truncated_files_are_found_and_removed(tmp_path: Path) -> None:
    make_model(tmp_path)
    run("write", str(tmp_path))
    assert run("check", str(tmp_path))["ok"] is True
    weights = tmp_path / "sub" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    weights.write_bytes(bytes(data))  # same size, one flipped byte
    (tmp_path / "config.json").write_text('{"model_')  # truncated
    result = run("check", str(tmp_path))
    assert result["ok"] is False
    assert result["bad"] == ["config.json", "sub/model.safetensors"]
    removed = run("check", str(tmp_path), "--remove-bad")
    assert removed["removed"] == ["config.json", "sub/model.safetensors"]
    assert not weights.exists()
    assert run("check", str(tmp_path))["missing"] == ["config.json", "sub/model.safetensors"]


def test_extra_files_are_reported_but_do_not_fail(tmp_path: Path) -> None:
    make_model(tmp_path)
    run("write", str(tmp_path))
    (tmp_path / "notes.txt").write_text("added later\n")
    result = run("check", str(tmp_path))
    assert result["ok"] is True and result["extra"] == ["notes.txt"]


def test_quick_check_reads_only_files_whose_size_or_mtime_changed(tmp_path: Path) -> None:
    """The default re-run check: size + mtime against MANIFEST.stat.json; a file that differs is
    hashed (and so caught); a byte flipped with size and mtime kept is only found by a deep check
    (-e model_verify=deep, and always after a download)."""
    import os

    make_model(tmp_path)
    run("write", str(tmp_path))
    quick = run("check", str(tmp_path), "--quick")
    assert quick["ok"] and quick["mode"] == "quick" and quick["hashed"] == 0
    assert run("check", str(tmp_path))["hashed"] == 2  # deep: every file
    blob = tmp_path / "sub" / "model.safetensors"
    st = blob.stat()
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    os.utime(
        blob, ns=(st.st_atime_ns, st.st_mtime_ns)
    )  # size and mtime kept, as the chaos test does
    assert run("check", str(tmp_path), "--quick")["ok"] is True  # quick cannot see it
    assert run("check", str(tmp_path))["bad"] == ["sub/model.safetensors"]  # deep does
    blob.write_bytes(bytes(data[:-10]))  # truncated: the size differs
    changed = run("check", str(tmp_path), "--quick")
    assert changed["bad"] == ["sub/model.safetensors"] and changed["hashed"] == 1
