"""Chunked prefill across steps (Dynamic SplitFuse) on the shared live TP=2 server (24 tokens per
step): a long prompt takes several steps to prefill, a running stream gets tokens during them, and
the long prompt's answer is the same as when it runs alone. (Greedy equality with single-process
transformers for chunk-prefilled chat prompts: test_server.py.)"""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from conftest import LaunchedServer

pytestmark = pytest.mark.slow

BUDGET = 24  # --max-batch-tokens of the shared server (conftest.py)
LONG_PROMPT = " ".join(f"item{i}" for i in range(40))  # ~194 tokens (max_prompt_tokens 256)


def _stream(server: LaunchedServer, auth: dict[str, str], body: dict, arrivals: list[float]) -> str:
    """POST a streamed completion; append each text chunk's arrival time; return the text."""
    text = []
    with httpx.stream(
        "POST", server.base_url + "/v1/completions", json={**body, "stream": True}, headers=auth, timeout=60
    ) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if chunk["choices"] and chunk["choices"][0]["text"]:
                arrivals.append(time.monotonic())
                text.append(chunk["choices"][0]["text"])
    return "".join(text)


def test_long_prompt_prefills_over_steps_while_a_stream_keeps_decoding(
    server: LaunchedServer, auth: dict[str, str]
) -> None:
    long_body = {"model": "tiny", "prompt": LONG_PROMPT, "max_tokens": 8, "temperature": 0}
    long_body["ignore_eos"] = True
    alone = httpx.post(server.base_url + "/v1/completions", json=long_body, headers=auth, timeout=60).json()
    prompt_tokens = alone["usage"]["prompt_tokens"]
    assert prompt_tokens >= 4 * BUDGET, f"the long prompt has only {prompt_tokens} tokens"

    a_arrivals: list[float] = []
    a_body = {"model": "tiny", "prompt": "count", "max_tokens": 200, "temperature": 0, "ignore_eos": True}
    a = threading.Thread(target=_stream, args=(server, auth, a_body, a_arrivals))
    a.start()
    deadline = time.monotonic() + 30
    while len(a_arrivals) < 3:  # stream A is decoding
        assert time.monotonic() < deadline and a.is_alive(), "stream A never started"
        time.sleep(0.01)
    b_arrivals: list[float] = []
    sent = time.monotonic()
    b_text = _stream(server, auth, long_body, b_arrivals)
    a.join(timeout=60)

    during = [t for t in a_arrivals if sent < t < b_arrivals[0]]
    steps = -(-prompt_tokens // (BUDGET - 1))  # B shares each step with A's one decode token
    print(
        f"long prompt: {prompt_tokens} tokens, >= {steps} prefill steps; stream A got {len(during)} "
        f"tokens between B's arrival and B's first token ({(b_arrivals[0] - sent) * 1000:.0f} ms)"
    )
    # prefilled in one step (no chunking across steps), A would get at most 1 token in between
    assert len(during) >= steps - 2, (len(during), steps)
    assert b_text == alone["choices"][0]["text"]
