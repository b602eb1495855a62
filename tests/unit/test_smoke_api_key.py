"""Unit tests of how roles/smoketest/files/smoke.py gets the API key: from --api-key-file (the
role hands it over in a 0600 file, never argv or the environment), else env TPSERVE_API_KEY."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SMOKE = Path(__file__).resolve().parents[2] / "roles/smoketest/files/smoke.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("smoke", SMOKE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


smoke = _load()
REQUIRED = [
    "--url=http://127.0.0.1:1",
    "--inventory=lab",
    "--layout=tp_across_nodes",
    "--model=m",
    "--tp-size=4",
    "--world-size=4",
    "--report=/dev/null",
]


def test_file_wins_over_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "key"
    f.write_text("sk-from-file\n", encoding="utf-8")
    monkeypatch.setenv("TPSERVE_API_KEY", "sk-from-env")
    args = smoke.parse_args([*REQUIRED, f"--api-key-file={f}"])
    assert smoke.api_key(args.api_key_file) == "sk-from-file"


def test_env_when_no_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TPSERVE_API_KEY", "sk-from-env")
    assert smoke.api_key(smoke.parse_args(REQUIRED).api_key_file) == "sk-from-env"
    monkeypatch.delenv("TPSERVE_API_KEY")
    assert smoke.api_key(None) == ""


def test_missing_or_empty_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="cannot read --api-key-file"):
        smoke.api_key(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(SystemExit, match="is empty"):
        smoke.api_key(empty)
