"""Build a tiny, random-weight, clearly-labelled synthetic Qwen2 model with a real tokenizer.

    python -m tpserve.tools.synthetic OUT_DIR [--hidden 256 --intermediate 512 --layers 2 --heads 8
                                         --kv-heads 4 --vocab 2048 --seed 0]

The tokenizer is a byte-level BPE trained locally with `tokenizers` on a built-in corpus, so any
text (Chinese included) round-trips. Same arguments → byte-identical files (fit for manifests).
The defaults shard evenly for TP ∈ {1, 2, 4}: 4 KV heads, hidden/4 = 64 (DeepSpeed tp_grain_size).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"

# Qwen-style ChatML template; a default system prompt is added when none is given.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS_BASE = [
    "You are a helpful assistant. Answer the question clearly and briefly.",
    "Hello! How are you today? I am fine, thank you. What can I do for you?",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = ( ) [ ] { } < > , . ; : ! ?",
    "Tensor parallelism splits each weight matrix across several GPUs; every rank runs every step.",
    "DeepSpeed, PyTorch, transformers, FastAPI and uvicorn serve this synthetic model over HTTP.",
    "def main() -> int:\n    print('hello world')\n    return 0\n",
    "Please introduce yourself. Tell me a story about a cat, a dog and a small robot.",
    "你好，请介绍一下你自己。我是一个人工智能助手，很高兴为你服务。",
    "今天天气很好，我们一起去公园散步吧。北京、上海、广州、深圳、杭州、雅加达。",
    "张量并行把每个权重矩阵切分到多个显卡上，每个进程都执行每一步。",
    "Bonjour, ça va? Hola, ¿qué tal? Guten Tag! Привет! こんにちは。안녕하세요.",
]


_SYLLABLES = "ba be bi bo bu ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re ri ro ru "
_SYLLABLES += "sa se si so su ta te ti to tu za ze zi zo zu str tr pl gr ch sh th ng"
_HANZI = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可里后"


def _corpus() -> list[str]:
    """A deterministic corpus with enough distinct pairs to fill the vocabulary with merges."""
    import random

    rng = random.Random(1234)  # fixed: the tokenizer never depends on the weight seed
    syl = _SYLLABLES.split()
    lines: list[str] = []
    for rep in range(20):
        for i, line in enumerate(_CORPUS_BASE):
            lines.append(f"{line} ({rep * len(_CORPUS_BASE) + i})")
    for _ in range(3000):
        words = ["".join(rng.choice(syl) for _ in range(rng.randint(1, 4))) for _ in range(8)]
        hanzi = "".join(rng.choice(_HANZI) for _ in range(rng.randint(2, 8)))
        lines.append(" ".join(words).capitalize() + f", {hanzi}。 {rng.randint(0, 99999)}")
    return lines


def build_tokenizer(vocab_size: int) -> object:
    """Train a byte-level BPE and wrap it as a transformers PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=["<|im_start|>"],
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(
    out_dir: Path,
    hidden: int = 256,
    intermediate: int = 512,
    layers: int = 2,
    heads: int = 8,
    kv_heads: int = 4,
    vocab: int = 2048,
    seed: int = 0,
    max_positions: int = 4096,
) -> Path:
    """Write config, safetensors weights, generation config and tokenizer into out_dir."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    if hidden % heads:
        raise ValueError(f"--hidden {hidden} must be divisible by --heads {heads}")
    if heads % kv_heads:
        raise ValueError(f"--heads {heads} must be divisible by --kv-heads {kv_heads}")
    out_dir.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(vocab)
    n_tokens = len(tokenizer)  # type: ignore[arg-type]
    if n_tokens != vocab:  # every model id must decode to text
        raise ValueError(f"tokenizer trained to {n_tokens} tokens, not --vocab {vocab}; lower --vocab")
    eos_id = tokenizer.convert_tokens_to_ids(EOS_TOKEN)  # type: ignore[attr-defined]
    pad_id = tokenizer.convert_tokens_to_ids(PAD_TOKEN)  # type: ignore[attr-defined]

    config = Qwen2Config(
        vocab_size=vocab,  # ≥ len(tokenizer), like Qwen's padded vocabularies
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        initializer_range=0.2,  # peaked logits: greedy argmax is robust to fp32 all-reduce rounding
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        eos_token_id=[eos_id, pad_id], pad_token_id=pad_id, bos_token_id=pad_id, do_sample=False
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)  # type: ignore[attr-defined]

    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tpserve_synthetic"] = True
    cfg["tpserve_synthetic_note"] = "random weights built by tpserve.tools.synthetic; output is meaningless"
    cfg["tpserve_synthetic_seed"] = seed
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    (out_dir / "SYNTHETIC_MODEL.txt").write_text(
        "This directory holds a SYNTHETIC model with random weights (tpserve.tools.synthetic).\n"
        "It exists to test tensor-parallel serving; its text output is meaningless.\n"
    )
    return out_dir


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tpserve.tools.synthetic", description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--intermediate", type=int, default=512)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-positions", type=int, default=4096)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    a = _parse(argv)
    try:
        out = build(
            a.out_dir,
            hidden=a.hidden,
            intermediate=a.intermediate,
            layers=a.layers,
            heads=a.heads,
            kv_heads=a.kv_heads,
            vocab=a.vocab,
            seed=a.seed,
            max_positions=a.max_positions,
        )
    except ValueError as exc:
        print(f"tpserve.tools.synthetic: {exc}", file=sys.stderr)
        return 2
    print(f"tpserve.tools.synthetic: wrote a synthetic Qwen2 model to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
