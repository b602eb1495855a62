"""Windowed incremental detokenisation == the original full re-decode, piece by piece.

The oracle is `ReferenceTextStream` (the pre-optimisation implementation: decodes the whole output
on every token) and the tokenizer's own full decode. Token sequences come from the synthetic
model's real byte-level BPE tokenizer: uniformly random ids (special tokens, lone UTF-8 bytes,
invalid sequences), and real English/Chinese/emoji text cut into single-byte tokens so multi-byte
characters are split across tokens. Stop strings are cut from the text itself so they really hit.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from tpserve.core.textstream import ReferenceTextStream, TextStream

TEXTS = [
    "你好，请介绍一下你自己。Tensor parallel 数据并行 🚀🚀 émigré naïve — done.",
    "def main() -> int:\n    print('héllo wörld 🌍')\n    return 0\n",
    "Ünïcödé\u00a0spaces\u3000全角　and ASCII </answer> tail 末尾",
]


@pytest.fixture(scope="module")
def tok(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_dir)


SHARED_CACHE: dict[int, str] = {}  # the scheduler shares one decode([id]) cache across streams


def _run(cls: Any, decode: Any, ids: list[int], stop: list[str]) -> tuple[list[str], bool, str]:
    stream = cls(decode, stop)
    pieces = [stream.add(t) for t in ids]
    pieces.append(stream.flush())
    return pieces, stream.stopped, stream.text


def _byte_ids(tok: Any, text: str) -> list[int]:
    """One token per UTF-8 byte (the byte-level alphabet), so every multi-byte character is split."""
    ids = [tok.convert_tokens_to_ids(t) for t in tok.tokenize(text)]
    out: list[int] = []
    for t in ids:  # re-split each BPE token into its single-byte tokens
        out.extend(tok.convert_tokens_to_ids(list(tok.convert_ids_to_tokens(t))))
    return out


def _mixed_ids(tok: Any, rng: random.Random, text: str) -> list[int]:
    """Real BPE tokens, with random stretches replaced by their single-byte tokens."""
    ids: list[int] = []
    for t in tok.encode(text, add_special_tokens=False):
        piece = tok.convert_ids_to_tokens(t)
        ids.extend(tok.convert_tokens_to_ids(list(piece)) if rng.random() < 0.3 else [t])
    return ids


def _stops(rng: random.Random, text: str) -> list[str]:
    stops: list[str] = []
    for _ in range(rng.randint(0, 3)):
        if not text:
            break
        a = rng.randrange(len(text))
        stops.append(text[a : a + rng.randint(1, 6)])
    if rng.random() < 0.3:
        stops.append("never-appears-Ω")
    return stops


def _check(tok: Any, ids: list[int], stop: list[str]) -> None:
    def decode(x: list[int]) -> str:
        return tok.decode(x, skip_special_tokens=True)

    new = _run(lambda d, s: TextStream(d, s, SHARED_CACHE), decode, ids, stop)
    ref = _run(ReferenceTextStream, decode, ids, stop)
    assert new == ref, f"ids={ids} stop={stop}"
    pieces, stopped, text = new
    assert "".join(pieces) == text
    if not stopped:
        assert text == decode(ids)
    if not stop:
        assert all("\ufffd" not in p for p in pieces[:-1]) or "\ufffd" in decode(ids)


def test_real_text_split_into_bytes_streams_like_full_decode(tok: Any) -> None:
    for text in TEXTS:
        ids = _byte_ids(tok, text)
        assert tok.decode(ids) == text
        _check(tok, ids, [])
        pieces = _run(TextStream, lambda x: tok.decode(x, skip_special_tokens=True), ids, [])[0]
        assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


@pytest.mark.parametrize("seed", range(4))
def test_random_sequences_match_reference(tok: Any, seed: int) -> None:
    rng = random.Random(seed)
    vocab = len(tok)
    for _ in range(150):
        kind = rng.random()
        if kind < 0.35:  # uniformly random ids: specials, lone bytes, invalid UTF-8
            ids = [rng.randrange(vocab) for _ in range(rng.randint(1, 60))]
        else:  # real text, partly byte-split, sometimes with a random id spliced in
            text = rng.choice(TEXTS)
            a = rng.randrange(len(text))
            ids = _mixed_ids(tok, rng, text[a : a + rng.randint(1, 80)])
            if ids and rng.random() < 0.3:
                ids.insert(rng.randrange(len(ids)), rng.randrange(vocab))
        full = tok.decode(ids, skip_special_tokens=True)
        _check(tok, ids, _stops(rng, full))


def test_long_output_and_stop_deep_into_it(tok: Any) -> None:
    ids = _mixed_ids(tok, random.Random(9), "".join(TEXTS) * 20)
    full = tok.decode(ids, skip_special_tokens=True)
    _check(tok, ids, [])
    _check(tok, ids, ["</answer>"])  # appears in every repetition: stops at the first one
    _check(tok, ids, [full[-12:-3]])  # near the very end
    _check(tok, ids, ["🚀🚀 é", "n\u3000全"])


def test_char_decoder_overlapping_stops() -> None:
    vocab = ["A", "AB", "B", "C", "x"]

    def decode(x: list[int]) -> str:
        return "".join(vocab[i] for i in x)

    rng = random.Random(3)
    for _ in range(500):
        ids = [rng.randrange(len(vocab)) for _ in range(rng.randint(1, 30))]
        stops = rng.sample(["AAB", "ABC", "BB", "xA", "AAAA", "C"], rng.randint(0, 3))
        assert _run(TextStream, decode, ids, stops) == _run(ReferenceTextStream, decode, ids, stops)


def test_decode_window_stays_small(tok: Any) -> None:
    seen: list[int] = []

    def decode(x: list[int]) -> str:
        seen.append(len(x))
        return tok.decode(x, skip_special_tokens=True)

    stream = TextStream(decode, ["</answer>"])
    ids = _byte_ids(tok, TEXTS[0] * 30)
    for t in ids:
        stream.add(t)
    assert len(ids) > 1000 and max(seen) <= 8  # longest UTF-8 character is 4 bytes
