"""The one support table (tpserve.engines.support) and `python -m tpserve.tools.plan`, which serve.yml runs
on the master instead of keeping its own lists of architectures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tpserve.engines import support
from tpserve.tools.plan import main

QWEN2 = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2"}
GPT2 = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}


@pytest.mark.parametrize(
    ("asked", "config", "accel", "cc", "engine", "reason_part", "problem_part"),
    [
        ("auto", QWEN2, "cuda", (8, 6), "fastgen", "CUDA CC>=8.0", None),  # the A10
        ("auto", QWEN2, "cpu", None, "autotp", "no CUDA device", None),  # the lab
        ("auto", QWEN2, "cuda", (7, 5), "autotp", "compute capability 7.5 < 8.0", None),  # a T4
        ("auto", QWEN2, "cuda", None, "fastgen", "CUDA", None),  # CC unknown: the GPU decides at start
        ("fastgen", QWEN2, "cpu", None, "fastgen", "explicitly", "no CUDA device"),
        ("autotp", GPT2, "cuda", (9, 0), "autotp", "explicitly", "AutoTP cannot shard GPT2LMHeadModel"),
        ("auto", GPT2, "cpu", None, "autotp", "no CUDA device", "AutoTP cannot shard GPT2LMHeadModel"),
    ],
)
def test_choose(asked, config, accel, cc, engine, reason_part, problem_part) -> None:  # type: ignore[no-untyped-def]
    got, reason, problem = support.choose(asked, config, accel, cc)
    assert got == engine and reason_part in reason
    assert (problem is None) if problem_part is None else (problem_part in problem), problem


def test_plan_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "config.json").write_text(json.dumps(QWEN2))
    assert main(["--model-dir", str(tmp_path), "--accelerator", "cuda", "--compute-capability", "8.6"]) == 0
    assert json.loads(capsys.readouterr().out)["engine"] == "fastgen"
    assert main(["--model-dir", str(tmp_path), "--accelerator", "cpu", "--engine", "fastgen"]) == 2
    out = capsys.readouterr()
    assert json.loads(out.out)["problem"] and "tpserve_engine=fastgen cannot run" in out.err
