"""A live TP=2 tpserve under the DeepSpeed launcher (CPU, gloo): sharding, equivalence, API, limits."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import API_KEY, PROFILED_STEPS, LaunchedServer

from tpserve.frontend.schemas import REFERENCE_SYSTEM_PROMPT

pytestmark = pytest.mark.slow

CHINESE = "你好，请介绍一下你自己。"


def post(
    server: LaunchedServer, path: str, body: object, auth: dict[str, str] | None = None, **kw: object
) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, headers=auth or {}, timeout=60, **kw)  # type: ignore[arg-type]


# -- (a) sharding and equivalence with single-process transformers ------------------------------
def test_health_shows_two_sharded_ranks(server: LaunchedServer) -> None:
    h = httpx.get(server.base_url + "/health", timeout=10).json()
    assert h["status"] == "ok"
    assert h["engine"] == "autotp" and "no CUDA" in h["engine_reason"]
    assert h["world_size"] == 2 and h["tp_size"] == 2 and h["dtype"] == "float32"
    assert h["engine_details"]["engine"] == "autotp" and h["engine_details"]["tp_size"] == 2
    assert [r["rank"] for r in h["ranks"]] == [0, 1]
    for r in h["ranks"]:
        assert abs(r["linear_fraction"] - 0.5) <= 0.02, r
        assert r["linear_weight_bytes"] * 2 == pytest.approx(r["full_linear_weight_bytes"], rel=0.04)
    assert h["synthetic_model"] is True


def test_greedy_tokens_equal_single_process_transformers(
    server: LaunchedServer, model_dir: Path, auth: dict[str, str]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    eos = [tok.eos_token_id, tok.pad_token_id]
    for prompt in (CHINESE, "Tell me a story about a small robot.", "1 2 3"):
        r = post(server, "/generate", {"prompt": prompt, "max_new_tokens": 24}, auth)
        assert r.status_code == 200, r.text
        served = r.json()["output_token_ids"]
        messages = [
            {"role": "system", "content": REFERENCE_SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ]
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tok.encode(text, add_special_tokens=False)])
        with torch.inference_mode():
            out = model.generate(
                ids, max_new_tokens=24, do_sample=False, eos_token_id=eos, pad_token_id=eos[1]
            )
        reference = [t for t in out[0, ids.shape[1] :].tolist() if t not in eos]
        assert served == reference, (prompt, served, reference)
        assert len(served) >= 2


# -- (b) the API -------------------------------------------------------------------------------
def test_generate_reference_api(server: LaunchedServer, auth: dict[str, str]) -> None:
    r = post(
        server, "/generate", {"prompt": CHINESE, "system_prompt": "You are terse.", "max_new_tokens": 8}, auth
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body["generated_text"], str) and body["generation_time_sec"] > 0
    assert (
        body["usage"]["completion_tokens"] == len(body["output_token_ids"]) or body["finish_reason"] == "stop"
    )
    other = post(server, "/generate", {"prompt": CHINESE, "max_new_tokens": 8}, auth).json()
    assert other["usage"]["prompt_tokens"] != body["usage"]["prompt_tokens"]  # the system prompt was applied
    # the reference app's defaults: its system prompt and 256 new tokens
    explicit = {"prompt": CHINESE, "system_prompt": REFERENCE_SYSTEM_PROMPT, "max_new_tokens": 8}
    same = post(server, "/generate", explicit, auth).json()
    assert {**same, "generation_time_sec": 0} == {
        **other,
        "generation_time_sec": 0,
    }  # the default is that prompt
    whole = post(server, "/generate", {"prompt": "count", "ignore_eos": True}, auth).json()
    assert whole["usage"]["completion_tokens"] == 256, whole["usage"]
    health = httpx.get(server.base_url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["rank"] == 0 and health["model"] == "tiny"


def test_rank_1_logs_where_its_step_time_went(server: LaunchedServer, auth: dict[str, str]) -> None:
    """TPSERVE_WORKER_STATS=100 (conftest): every 100 steps rank 1 logs its own step phases (rank 0's
    are in /metrics); 120 decode steps make at least one line whatever ran before."""
    r = post(server, "/generate", {"prompt": "count", "max_new_tokens": 120, "ignore_eos": True}, auth)
    assert r.status_code == 200, r.text
    pattern = re.compile(
        r"rank 1: 100 steps, mean ms per step: wait for rank 0 [\d.]+, run ([\d.]+), report [\d.]+"
    )
    deadline = time.monotonic() + 10
    while not (found := pattern.findall(server.log_path.read_text(errors="replace"))):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)
    assert float(found[-1]) > 0  # a forward of the tiny model takes some time on every step


def test_every_rank_profiles_its_steps_when_asked(server: LaunchedServer, auth: dict[str, str]) -> None:
    """TPSERVE_PROFILE=3:8:DIR (conftest): each rank writes the profile of its own steps 3..10 (the
    same window on every rank: every rank runs every step). On CPU there is no GPU timeline: the
    window's host times and a note; the GPU host's kernel figures are tests/gpu's."""
    r = post(server, "/generate", {"prompt": "count", "max_new_tokens": 20, "ignore_eos": True}, auth)
    assert r.status_code == 200, r.text
    first, count = PROFILED_STEPS
    deadline = time.monotonic() + 10
    paths = [server.profile_dir / f"stepprofile-rank{rank}.json" for rank in (0, 1)]  # type: ignore[attr-defined]
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)
    for rank, path in enumerate(paths):
        got = json.loads(path.read_text())
        assert (got["rank"], got["steps"], got["first_step"]) == (rank, count, first), got
        assert got["gpu"] == "none (CPU rank)", got
        assert 0 < got["host_run_step_ms_mean"] <= got["wall_ms_per_step"], got


def test_djl_style_predictions(server: LaunchedServer, auth: dict[str, str]) -> None:
    url = server.base_url + "/predictions/tiny"
    r = httpx.post(
        url, content=b"Tell me a story.", headers={**auth, "content-type": "text/plain"}, timeout=60
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body, list) and len(body) == 1 and isinstance(body[0]["generated_text"], str), body
    same = post(server, "/v1/completions", {"model": "tiny", "prompt": "Tell me a story.", "max_tokens": 5,
                                            "temperature": 0}, auth).json()["choices"][0]["text"]  # fmt: skip
    djl = {"inputs": "Tell me a story.", "parameters": {"max_new_tokens": 5}}
    short = httpx.post(url, json=djl, headers=auth, timeout=60)
    assert short.status_code == 200 and short.json()[0]["generated_text"] == same, (short.text, same)
    assert (
        httpx.post(server.base_url + "/predictions/other", content=b"x", headers=auth, timeout=10).status_code
        == 404
    )
    assert httpx.post(url, content=b"", headers=auth, timeout=10).status_code == 400
    bad = httpx.post(url, json={"inputs": "x", "parameters": {"seed": 2**70}}, headers=auth, timeout=10)
    assert bad.status_code == 422, bad.text
    assert httpx.post(url, content=b"x", timeout=10).status_code == 401


def test_models_and_chat_completion(server: LaunchedServer, auth: dict[str, str]) -> None:
    models = httpx.get(server.base_url + "/v1/models", headers=auth, timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    r = post(
        server,
        "/v1/chat/completions",
        {
            "model": "tiny",
            "messages": [{"role": "user", "content": CHINESE}],
            "max_tokens": 10,
            "temperature": 0,
        },
        auth,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"]["completion_tokens"] <= 10
    assert (
        body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    )


def test_completions_seed_reproducible_and_stop(server: LaunchedServer, auth: dict[str, str]) -> None:
    req = {
        "model": "tiny",
        "prompt": "Once upon a time",
        "max_tokens": 16,
        "temperature": 1.0,
        "top_p": 0.9,
        "top_k": 50,
        "seed": 42,
    }
    a = post(server, "/v1/completions", req, auth).json()["choices"][0]["text"]
    b = post(server, "/v1/completions", req, auth).json()["choices"][0]["text"]
    assert a == b  # same seed, same tokens
    greedy = post(server, "/v1/completions", {**req, "temperature": 0}, auth).json()["choices"][0]
    text = greedy["text"]
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    if stop.strip():
        cut = post(server, "/v1/completions", {**req, "temperature": 0, "stop": [stop]}, auth).json()[
            "choices"
        ][0]
        assert cut["finish_reason"] == "stop"
        assert cut["text"] == text[: text.index(stop)]


def test_streaming_chunks_arrive_before_the_end(server: LaunchedServer, auth: dict[str, str]) -> None:
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": CHINESE}],
        "max_tokens": 48,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.monotonic()
    arrivals: list[tuple[float, dict]] = []
    done_at = None
    with httpx.stream(
        "POST", server.base_url + "/v1/chat/completions", json=body, headers=auth, timeout=60
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                continue
            assert line.startswith("data: ")
            payload = line[len("data: ") :]
            if payload == "[DONE]":
                done_at = time.monotonic() - t0
                break
            arrivals.append((time.monotonic() - t0, json.loads(payload)))
    assert done_at is not None
    content = [(t, c) for t, c in arrivals if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert len(content) >= 2
    first_t, last_t = content[0][0], content[-1][0]
    print(
        f"stream: first content chunk at {first_t * 1000:.1f} ms, last at {last_t * 1000:.1f} ms, "
        f"[DONE] at {done_at * 1000:.1f} ms, {len(content)} content chunks"
    )
    assert first_t < last_t <= done_at
    assert arrivals[-1][1]["usage"]["completion_tokens"] >= 2
    non_stream = post(server, "/v1/chat/completions", {**body, "stream": False}, auth).json()
    assert (
        "".join(c["choices"][0]["delta"]["content"] for _, c in content)
        == non_stream["choices"][0]["message"]["content"]
    )


def test_metrics(server: LaunchedServer, auth: dict[str, str]) -> None:
    post(server, "/generate", {"prompt": "metrics", "max_new_tokens": 4}, auth)
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    for name in (
        "tpserve_requests_total",
        "tpserve_prompt_tokens_total",
        "tpserve_output_tokens_total",
        "tpserve_time_to_first_token_seconds_bucket",
        "tpserve_inter_token_latency_seconds_bucket",
        "tpserve_queue_depth",
        "tpserve_batch_size_bucket",
        'tpserve_finished_requests_total{reason="length"}',
    ):
        assert name in text, name
    assert 'tpserve_requests_total{endpoint="/generate",status="200"}' in text
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples["tpserve_output_tokens_total"] >= 4
    assert samples["tpserve_time_to_first_token_seconds_count"] >= 1
    assert (
        samples["tpserve_request_duration_seconds_count"] >= 1 and samples["tpserve_model_load_seconds"] > 0
    )
    # CPU cluster, autotp: no GPU series and no paged KV cache: absent, not zero
    assert "tpserve_gpu_" not in text and "tpserve_kv_cache_blocks" not in text


BAD = [
    ("/generate", {"max_new_tokens": 5}, 422, "prompt"),
    ("/generate", {"prompt": "x", "max_new_tokens": -1}, 422, "max_new_tokens"),
    ("/generate", {"prompt": "x", "max_new_tokens": 10**9}, 422, "max_new_tokens"),
    ("/generate", {"prompt": "x", "temperature": -1}, 422, "temperature"),
    ("/generate", {"prompt": "word " * 400}, 400, "256"),
    (
        "/v1/chat/completions",
        {"model": "tiny", "n": 2, "messages": [{"role": "user", "content": "x"}]},
        400,
        "n=2",
    ),
    ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "x"}]}, 404, "nope"),
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, 422, "messages"),
    ("/v1/completions", {"model": "tiny", "prompt": ["a", "b"]}, 400, "one prompt"),
]


@pytest.mark.parametrize(("path", "body", "status", "reason"), BAD)
def test_bad_input_gets_4xx_with_reason(
    server: LaunchedServer, auth: dict[str, str], path: str, body: dict, status: int, reason: str
) -> None:
    r = post(server, path, body, auth)
    assert r.status_code == status, r.text
    assert reason in r.json()["error"]["message"]


def test_invalid_json_auth_and_body_size(server: LaunchedServer, auth: dict[str, str]) -> None:
    r = httpx.post(
        server.base_url + "/generate",
        content=b"{not json",
        timeout=10,
        headers={**auth, "content-type": "application/json"},
    )
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]
    r = post(server, "/generate", {"prompt": "x"})
    assert r.status_code == 401 and "missing API key" in r.json()["error"]["message"]
    r = post(server, "/generate", {"prompt": "x"}, {"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "invalid API key" in r.json()["error"]["message"]
    assert httpx.get(server.base_url + "/health", timeout=10).status_code == 200  # open without a key
    big = {"prompt": "x" * 70_000}
    r = post(server, "/generate", big, auth)
    assert r.status_code == 413 and "exceeds 65536 bytes" in r.json()["error"]["message"]

    def chunked() -> object:  # no Content-Length: the real byte count must be enforced
        yield b'{"prompt": "'
        for _ in range(20):
            yield b"y" * 5000
        yield b'"}'

    r = httpx.post(
        server.base_url + "/generate",
        content=chunked(),
        timeout=10,
        headers={**auth, "content-type": "application/json"},
    )
    assert r.status_code == 413


def test_concurrent_requests_equal_their_answer_alone(server: LaunchedServer, auth: dict[str, str]) -> None:
    prompts = [f"Question number {i}: what is {i} + {i}?" for i in range(16)]

    async def one(client: httpx.AsyncClient, prompt: str) -> list[int]:
        r = await client.post(
            server.base_url + "/generate", json={"prompt": prompt, "max_new_tokens": 16}, headers=auth
        )
        assert r.status_code == 200, r.text
        return r.json()["output_token_ids"]

    async def run() -> tuple[list[list[int]], list[list[int]], float]:
        async with httpx.AsyncClient(timeout=120) as client:
            alone = [await one(client, p) for p in prompts]
            t0 = time.monotonic()
            together = await asyncio.gather(*(one(client, p) for p in prompts))
            return alone, list(together), time.monotonic() - t0

    alone, together, took = asyncio.run(run())
    print(f"16 concurrent /generate (16 tokens each) in {took:.2f} s")
    assert together == alone
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    batched = [line for line in text.splitlines() if line.startswith('tpserve_batch_size_bucket{le="1.0"}')]
    count = [line for line in text.splitlines() if line.startswith("tpserve_batch_size_count")]
    assert float(batched[0].split()[1]) < float(count[0].split()[1])  # some steps carried > 1 sequence
    overlap = httpx.get(server.base_url + "/health", timeout=10).json()["engine_details"]["async_scheduling"]
    assert overlap["enabled"] is True and overlap["steps_launched_ahead"] > 0, overlap


def test_official_openai_client(server: LaunchedServer) -> None:
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=server.base_url + "/v1", api_key=API_KEY, max_retries=0)
    msgs = [{"role": "user", "content": CHINESE}]
    full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0)
    assert full.choices[0].finish_reason in ("stop", "length")
    assert full.usage is not None and full.usage.completion_tokens >= 1
    chunks = list(
        client.chat.completions.create(model="tiny", messages=msgs, max_tokens=12, temperature=0, stream=True)
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == full.choices[0].message.content
    with pytest.raises(NotFoundError):
        client.chat.completions.create(model="other", messages=msgs)


OUTPUT_TOKENS = "tpserve_output_tokens_total"
CANCELLED = 'tpserve_finished_requests_total{reason="cancelled"}'


def series(server: LaunchedServer, name: str) -> float:
    """The sum of /metrics samples whose line starts with `name` (0 when there is none yet)."""
    text = httpx.get(server.base_url + "/metrics", timeout=10).text
    return sum(float(x.split()[1]) for x in text.splitlines() if x.startswith(name))


def wait_cancelled(server: LaunchedServer, cancelled_before: float, within_s: float = 30) -> None:
    """Until the core has ended one more request as 'cancelled' (its answer to the Cancel)."""
    deadline = time.monotonic() + within_s
    while series(server, CANCELLED) == cancelled_before:
        assert time.monotonic() < deadline, f"the abandoned request was not cancelled within {within_s:g} s"
        time.sleep(0.02)


def test_completions_stream_and_client_disconnect_frees_the_sequence(
    server: LaunchedServer, auth: dict[str, str]
) -> None:
    body = {"model": "tiny", "prompt": "stream me", "max_tokens": 24, "temperature": 0}
    full = post(server, "/v1/completions", body, auth).json()["choices"][0]["text"]
    pieces = []
    with httpx.stream(
        "POST", server.base_url + "/v1/completions", json={**body, "stream": True}, headers=auth, timeout=60
    ) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                pieces.append(json.loads(line[6:])["choices"][0]["text"])
    assert "".join(pieces) == full and len(pieces) >= 2

    # a client that goes away mid-stream: its sequence is cancelled and released, not generated on
    before, cancelled_before = series(server, OUTPUT_TOKENS), series(server, CANCELLED)
    with httpx.stream(
        "POST",
        server.base_url + "/v1/completions",
        headers=auth,
        timeout=60,
        json={**body, "max_tokens": 256, "ignore_eos": True, "stream": True},
    ) as r:
        for i, _ in enumerate(r.iter_lines()):
            if i >= 3:
                break
    wait_cancelled(server, cancelled_before)
    generated = series(server, OUTPUT_TOKENS) - before
    print(f"abandoned stream: {generated:.0f} of 256 tokens generated before it was cancelled")
    # cancelled, not ended by its length (a loaded machine may still let it run a while)
    assert generated < 256
    assert httpx.get(server.base_url + "/health", timeout=5).json()["status"] == "ok"


@pytest.mark.parametrize("path", ["/v1/completions", "/generate", "/v1/chat/completions"])
def test_non_streaming_client_disconnect_frees_the_sequence(
    server: LaunchedServer, auth: dict[str, str], path: str
) -> None:
    """A client of a plain (non-streamed) request that goes away: its sequence is cancelled at the
    next step instead of being generated to the end for nobody."""
    body: dict = {"max_tokens": 256, "temperature": 0, "ignore_eos": True, "model": "tiny"}
    if path == "/generate":
        body = {"prompt": "go on and on", "max_new_tokens": 256, "ignore_eos": True}
    elif path == "/v1/completions":
        body["prompt"] = "go on and on"
    else:
        body["messages"] = [{"role": "user", "content": "go on and on"}]
    before, cancelled_before = series(server, OUTPUT_TOKENS), series(server, CANCELLED)
    # the client sends the whole request and closes its socket at once, without reading (a timed
    # read cannot test this: a fast machine generates the tiny model's 256 tokens in under 0.05 s)
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Authorization: {auth['Authorization']}\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode() + payload)
    left = time.monotonic()
    wait_cancelled(server, cancelled_before)
    freed_after = time.monotonic() - left
    generated = series(server, OUTPUT_TOKENS) - before
    print(f"{path}: abandoned at once, freed {freed_after:.2f} s later, {generated:.0f}/256 tokens")
    assert generated < 256
