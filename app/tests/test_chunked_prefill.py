"""Chunked prefill across steps (Dynamic SplitFuse) on the shared live TP=2 server (24 tokens per
step): a long prompt takes several steps to prefill, a running stream gets tokens during them, and
the long prompt's answer is the same as when it runs alone. (Greedy equality with single-process
transformers for chunk-prefilled chat prompts: test_server.py.)

Against another server (e.g. fastgen on a GPU host, tests/gpu/chunked_prefill.sh):
TPSERVE_TEST_URL=http://127.0.0.1:8000 TPSERVE_TEST_MAX_BATCH_TOKENS=32 pytest test_chunked_prefill.py
(the server must serve the synthetic tokenizer as model "tiny", without an API key)."""

from __future__ import annotations

import json
import os
import threading
import time

import httpx
import pytest
from conftest import API_KEY

pytestmark = pytest.mark.slow

BUDGET = 24  # --max-batch-tokens of the shared server (conftest.py)


class Target:
    def __init__(self, url: str, budget: int, auth: dict[str, str]) -> None:
        self.base_url, self.budget, self.auth = url, budget, auth


@pytest.fixture
def target(request: pytest.FixtureRequest) -> Target:
    url = os.environ.get("TPSERVE_TEST_URL")
    if url:
        return Target(url, int(os.environ["TPSERVE_TEST_MAX_BATCH_TOKENS"]), {})
    server = request.getfixturevalue("server")
    return Target(server.base_url, BUDGET, {"Authorization": f"Bearer {API_KEY}"})


LONG_PROMPT = " ".join(f"item{i}" for i in range(40))  # ~194 tokens (max_prompt_tokens 256)


def _stream(server: Target, body: dict, arrivals: list[float]) -> str:
    """POST a streamed completion; append each text chunk's arrival time; return the text."""
    text = []
    url = server.base_url + "/v1/completions"
    with httpx.stream("POST", url, json={**body, "stream": True}, headers=server.auth, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: ") :])
            if chunk["choices"] and chunk["choices"][0]["text"]:
                arrivals.append(time.monotonic())
                text.append(chunk["choices"][0]["text"])
    return "".join(text)


def _prefill_chunks(server: Target) -> float:
    for line in httpx.get(server.base_url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("tpserve_prefill_chunks_total "):
            return float(line.split()[1])
    raise AssertionError("tpserve_prefill_chunks_total missing from /metrics")


def test_long_prompt_prefills_over_steps_while_a_stream_keeps_decoding(target: Target) -> None:
    server, budget = target, target.budget
    long_body = {"model": "tiny", "prompt": LONG_PROMPT, "max_tokens": 8, "temperature": 0}
    long_body["ignore_eos"] = True
    before = _prefill_chunks(server)
    url = server.base_url + "/v1/completions"
    alone = httpx.post(url, json=long_body, headers=server.auth, timeout=60).json()
    prompt_tokens = alone["usage"]["prompt_tokens"]
    assert prompt_tokens >= 4 * budget, f"the long prompt has only {prompt_tokens} tokens"
    assert _prefill_chunks(server) - before == -(-prompt_tokens // budget)  # alone: full chunks

    a_body = {"model": "tiny", "prompt": "count", "max_tokens": 256, "temperature": 0, "ignore_eos": True}
    # A quiet machine can finish A's 256 tokens before B's prefill ends (then nothing interleaves and
    # B's chunks are full-size): up to 3 tries until A is still decoding at B's first token.
    for attempt in range(3):
        a_arrivals: list[float] = []
        a = threading.Thread(target=_stream, args=(server, a_body, a_arrivals))
        a.start()
        deadline = time.monotonic() + 30
        while not a_arrivals:  # stream A is decoding
            assert time.monotonic() < deadline and a.is_alive(), "stream A never started"
            time.sleep(0.005)
        b_arrivals: list[float] = []
        before = _prefill_chunks(server)
        sent = time.monotonic()
        b_text = _stream(server, long_body, b_arrivals)
        b_chunks = _prefill_chunks(server) - before
        a.join(timeout=60)
        assert not a.is_alive(), "stream A did not finish"
        assert b_chunks >= -(-prompt_tokens // budget), (b_chunks, prompt_tokens)  # chunked in any case
        during = [t for t in a_arrivals if sent < t < b_arrivals[0]]
        wait_ms = (b_arrivals[0] - sent) * 1000
        print(
            f"try {attempt + 1}: long prompt: {prompt_tokens} tokens in {b_chunks:.0f} chunks beside "
            f"stream A; A got {len(during)} tokens between B's arrival and B's first token ({wait_ms:.0f} ms)"
        )
        if a_arrivals[-1] > b_arrivals[0]:
            break
    else:
        pytest.fail("stream A finished before B's first token in 3 tries: nothing to interleave")
    # each step carried A's decode token + at most 23 of B's: B needed that many steps, A ran in each
    assert b_chunks >= -(-prompt_tokens // (budget - 1)), (b_chunks, prompt_tokens)
    assert len(during) >= 1
    assert b_text == alone["choices"][0]["text"]
