"""The synthetic model: deterministic bytes, a real tokenizer, Qwen chat template, TP-friendly shape."""

from __future__ import annotations

import json
from pathlib import Path

from tpserve.tools.synthetic import build


def test_same_seed_same_bytes_other_seed_other_weights(model_dir: Path, tmp_path: Path) -> None:
    again = build(tmp_path / "again")
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == sorted(p.name for p in again.iterdir())
    for name in names:
        assert (model_dir / name).read_bytes() == (again / name).read_bytes(), name
    other = build(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").read_bytes() != (model_dir / "model.safetensors").read_bytes()
    assert (other / "tokenizer.json").read_bytes() == (model_dir / "tokenizer.json").read_bytes()


def test_labelled_and_balanced_for_tp4(model_dir: Path) -> None:
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["tpserve_synthetic"] is True and cfg["architectures"] == ["Qwen2ForCausalLM"]
    assert cfg["num_key_value_heads"] % 4 == 0
    assert cfg["hidden_size"] // 4 >= 64 and cfg["vocab_size"] % (64 * 4) == 0
    assert cfg["tie_word_embeddings"] is False


def test_tokenizer_round_trips_and_chat_template(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    assert len(tok) == json.loads((model_dir / "config.json").read_text())["vocab_size"]
    for text in ("你好，请介绍一下你自己。", "Hello, world! 123", "emoji 🤖 and tabs\t\n", "Привет"):
        assert tok.decode(tok.encode(text, add_special_tokens=False)) == text
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    chat = tok.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert chat == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    default = tok.apply_chat_template([{"role": "user", "content": "U"}], tokenize=False)
    assert default.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
