"""GPU memory arithmetic (tpserve.tools.memory) for the reference shapes: Qwen2.5-7B and -14B on a 24 GB
A10 and a 141 GB H200, at TP 1/2/4, plus the estimate checked against a real model's parameters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tpserve.tools.memory import GIB, ModelShape, main, plan

QWEN_7B = ModelShape(
    layers=28, hidden=3584, heads=28, kv_heads=4, head_dim=128, intermediate=18944, vocab=152064
)
QWEN_14B = ModelShape(
    layers=48, hidden=5120, heads=40, kv_heads=8, head_dim=128, intermediate=13824, vocab=152064
)
A10 = 23028 * 2**20  # what nvidia-smi reports for a 24 GB A10
H200 = 143771 * 2**20
# fastgen's own settings for --max-batch-size 32: 8192 tokens per step, 8192-token context
STEP = {"max_batch_tokens": 8192, "max_batch_size": 32, "max_context": 8192}


def test_weight_estimate_matches_the_published_sizes() -> None:
    # Qwen2.5-7B: 7.62 B parameters (15.2 GB in bf16); Qwen2.5-14B: 14.77 B (29.5 GB)
    assert QWEN_7B.weight_bytes(1) / 2 == pytest.approx(7.62e9, rel=0.01)
    assert QWEN_14B.weight_bytes(1) / 2 == pytest.approx(14.77e9, rel=0.01)
    # TP shards everything but the embedding table
    assert QWEN_14B.weight_bytes(2) == pytest.approx(
        (QWEN_14B.weight_bytes(1) + 152064 * 5120 * 2) / 2, rel=0.001
    )


def test_weight_estimate_matches_a_real_model(model_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    cfg = json.loads((model_dir / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    real = sum(p.numel() * p.element_size() for p in model.parameters())  # tied weights counted once
    assert ModelShape.from_config(cfg).weight_bytes(1, dtype_bytes=4) == pytest.approx(real, rel=0.02)


def test_7b_on_one_a10_fits_with_a_useful_kv_cache() -> None:
    p = plan(QWEN_7B, 1, A10, **STEP)
    assert p.problem is None, p.problem
    assert 14.0 < p.weight_bytes / GIB < 14.4
    assert 1.5 < p.headroom_bytes / GIB < 3.5  # not DeepSpeed's fixed 8 GiB, which left ~0 here
    assert p.kv_bytes / GIB > 4.5 and p.kv_tokens > 32 * 2048, p.describe()  # 32 streams of 2k tokens


def test_14b_on_one_a10_does_not_fit_and_says_why() -> None:
    p = plan(QWEN_14B, 1, A10, **STEP)
    assert p.problem is not None and "does not fit" in p.problem
    assert "weights/rank 27.5" in p.problem and "larger TP size" in p.problem, p.problem


@pytest.mark.parametrize(("tp", "min_kv_gib"), [(2, 3.0), (4, 10.0)])
def test_14b_over_two_or_four_a10s_fits(tp: int, min_kv_gib: float) -> None:
    p = plan(QWEN_14B, tp, A10, **STEP)
    assert p.problem is None, p.problem
    assert p.kv_bytes / GIB > min_kv_gib, p.describe()


def test_h200_holds_either_model_with_room() -> None:
    assert plan(QWEN_7B, 1, H200, **STEP).kv_bytes / GIB > 120
    assert plan(QWEN_14B, 1, H200, **STEP).kv_bytes / GIB > 105


def test_asked_kv_cache_that_does_not_fit_names_the_setting() -> None:
    p = plan(QWEN_7B, 1, A10, kv_cache_gb=12, **STEP)
    assert p.problem is not None and p.problem.startswith("--kv-cache-gb 12 does not fit"), p.problem
    ok = plan(QWEN_7B, 1, A10, kv_cache_gb=4, **STEP)
    assert ok.problem is None and ok.kv_bytes == 4 * GIB


def test_cli_prints_the_plan_and_exits_2_when_it_cannot_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cfg = {"num_hidden_layers": 48, "hidden_size": 5120, "num_attention_heads": 40, "num_key_value_heads": 8,
           "intermediate_size": 13824, "vocab_size": 152064}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert main(["--model-dir", str(tmp_path), "--gpu-gib", "22.49"]) == 2
    out = capsys.readouterr()
    assert json.loads(out.out)["fits"] is False and "larger TP size" in out.err
    assert main(["--model-dir", str(tmp_path), "--gpu-gib", "22.49", "--tp", "2"]) == 0
