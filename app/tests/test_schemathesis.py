"""Bad input against the live TP=2 server: a bounded schemathesis run + explicit refusals.

schemathesis (pinned in requirements/controller.txt) reads the server's own `/openapi.json` and
sends generated valid and invalid bodies to every operation; the check is `not_a_server_error`
(no 5xx) and, after the run, the server must still answer `/health` with both ranks. The explicit
cases below add what test_server.py does not already cover: absurd sampling values on the
OpenAI endpoints (422 naming the field), unknown model on /v1/completions, invalid JSON on the
OpenAI routes, and a wrong key on /v1/models.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import API_KEY, LaunchedServer

ST_EXAMPLES = int(os.environ.get("TPSERVE_ST_EXAMPLES", "30"))  # per operation and phase
ST_MAX_TIME = int(os.environ.get("TPSERVE_ST_MAX_TIME", "60"))  # seconds for the whole run


def _st_binary() -> str:
    found = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    if not found:
        pytest.fail("schemathesis is not installed: make venv (requirements/controller.txt pins it)")
    return found


def test_schemathesis_no_server_errors(server: LaunchedServer, tmp_path: Path) -> None:
    report = tmp_path / "st.json"
    cmd = [
        _st_binary(), "run", server.base_url + "/openapi.json",
        "--checks", "not_a_server_error",
        "--max-examples", str(ST_EXAMPLES), "--max-time", str(ST_MAX_TIME),
        "--seed", "7", "--workers", "1", "--request-timeout", "60",
        "--generation-database", "none", "--no-color",
        "--header", f"Authorization: Bearer {API_KEY}",
        "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    # One worker: with 2 worker threads hypothesis once died with CPython's "SystemError: AST
    # constructor recursion depth mismatch" (a tool crash, not a server error).
    proc = subprocess.run(  # cwd: st keeps a .schemathesis/ cache dir in its working directory
        cmd, capture_output=True, text=True, timeout=ST_MAX_TIME + 120, check=False, cwd=tmp_path
    )
    out = proc.stdout + proc.stderr
    print(out[-4000:])
    assert proc.returncode == 0, f"schemathesis exit {proc.returncode}:\n{out[-6000:]}"
    # The run really exercised the API: every operation, hundreds of generated cases, no failure.
    summary = json.loads(report.read_text())
    cases, ops = summary["test_cases"], summary["operations"]
    print(
        f"schemathesis: {cases['generated']} cases, {ops['tested']}/{ops['total']} operations, "
        f"{cases['with_failures']} with failures, {cases['errored']} errored, "
        f"{summary['running_time']:.0f} s"
    )
    assert ops["tested"] == ops["total"] >= 5, ops
    assert cases["generated"] >= 100 and cases["with_failures"] == 0 and cases["errored"] == 0, cases
    health = httpx.get(server.base_url + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["world_size"] == 2, health.text


def _post(server: LaunchedServer, path: str, body: object, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(server.base_url + path, json=body, headers=headers, timeout=60)


CHAT = [{"role": "user", "content": "hi"}]
ABSURD = [
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "temperature": -1}, "temperature"),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "top_p": 7}, "top_p"),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 10**9}, "max_tokens"),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_completion_tokens": 10**9},
     "max_completion_tokens"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "temperature": -1}, "temperature"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "top_p": 7}, "top_p"),
    ("/v1/completions", {"model": "tiny", "prompt": "x", "max_tokens": 10**9}, "max_tokens"),
    ("/generate", {"prompt": "x", "top_p": 7}, "top_p"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "field"), ABSURD)
def test_absurd_sampling_values_get_422_naming_the_field(
    server: LaunchedServer, auth: dict[str, str], path: str, body: dict, field: str
) -> None:
    r = _post(server, path, body, auth)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert field in err["message"] or err.get("param") == field, r.text


def test_unknown_model_on_completions_is_404(server: LaunchedServer, auth: dict[str, str]) -> None:
    r = _post(server, "/v1/completions", {"model": "no-such-model", "prompt": "x"}, auth)
    assert r.status_code == 404 and "no-such-model" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_invalid_json_on_openai_routes_is_422(
    server: LaunchedServer, auth: dict[str, str], path: str
) -> None:
    r = httpx.post(
        server.base_url + path,
        content=b'{"model": "tiny", "messages": [',
        headers={**auth, "content-type": "application/json"},
        timeout=10,
    )
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"], r.text


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not-the-key"}, {"Authorization": API_KEY}])
def test_models_and_chat_need_the_key(server: LaunchedServer, headers: dict[str, str]) -> None:
    assert httpx.get(server.base_url + "/v1/models", headers=headers, timeout=10).status_code == 401
    r = _post(server, "/v1/chat/completions", {"model": "tiny", "messages": CHAT}, headers)
    assert r.status_code == 401, r.text


# -- hostile values of every numeric field (issue: one request must never take the group down) ---
BIG = 2**70
C, G, CH = "/v1/completions", "/generate", "/v1/chat/completions"
HOSTILE = [
    (C, {"prompt": "x", "temperature": 1.0, "seed": BIG}, 422, "seed"),  # the group-killer
    (C, {"prompt": "x", "temperature": 1.0, "seed": -(2**63) - 1}, 422, "seed"),
    (CH, {"messages": CHAT, "temperature": 1.0, "seed": 2**64}, 422, "seed"),
    (G, {"prompt": "x", "temperature": 1.0, "seed": BIG}, 422, "seed"),
    (C, {"prompt": "x", "top_k": BIG}, 422, "top_k"),
    (C, {"prompt": "x", "top_k": -2}, 422, "top_k"),
    (C, {"prompt": "x", "max_tokens": BIG}, 422, "max_tokens"),
    (C, {"prompt": "x", "max_tokens": 0}, 422, "max_tokens"),
    (C, {"prompt": "x", "max_tokens": -BIG}, 422, "max_tokens"),
    (CH, {"messages": CHAT, "n": BIG}, 422, "n"),
    (CH, {"messages": CHAT, "max_completion_tokens": BIG}, 422, "max_completion_tokens"),
    (G, {"prompt": "x", "max_new_tokens": BIG}, 422, "max_new_tokens"),
    (G, {"prompt": "x", "temperature": 1e308}, 422, "temperature"),
    (G, {"prompt": "x", "top_p": 0}, 422, "top_p"),
    (G, {"prompt": "x", "top_p": -1e-300}, 422, "top_p"),
    (C, {"prompt": [BIG]}, 400, "token ids"),
    (C, {"prompt": [-1, 5]}, 400, "token ids"),
    (C, {"prompt": "x", "stop": ["s"] * 17}, 422, "stop"),
    (C, {"prompt": "x", "stop": "s" * 257}, 422, "stop"),
    (CH, {"messages": CHAT, "stop": ["ok", "t" * 300]}, 422, "stop"),
    (G, {"prompt": "y" * 9000}, 400, "bytes"),  # 256 prompt tokens x 32 bytes: refused untokenized
    (CH, {"messages": [{"role": "user", "content": "z" * 9000}]}, 400, "bytes"),
    (C, {"prompt": "w" * 9000}, 400, "bytes"),
]  # fmt: skip
# JSON that Python's parser accepts but no number field may hold: NaN and infinities
RAW = [
    (G, b'{"prompt": "x", "temperature": NaN}', "temperature"),
    (C, b'{"model": "tiny", "prompt": "x", "temperature": Infinity}', "temperature"),
    (C, b'{"model": "tiny", "prompt": "x", "top_p": NaN}', "top_p"),
    (CH, b'{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "temperature": -Infinity}',
     "temperature"),
]  # fmt: skip


def test_hostile_values_get_4xx_and_the_group_keeps_serving(
    server: LaunchedServer, auth: dict[str, str]
) -> None:
    steps_before = httpx.get(server.base_url + "/health", timeout=10).json()["steps"]
    tried = 0
    for path, body, status, field in HOSTILE:
        full = {"model": "tiny", **body} if path != G else body
        r = _post(server, path, full, auth)
        assert r.status_code == status, (path, body, r.text)
        err = r.json()["error"]
        assert field in err["message"] or err.get("param") == field, r.text
        tried += 1
    for path, raw, field in RAW:
        r = httpx.post(
            server.base_url + path,
            content=raw,
            headers={**auth, "content-type": "application/json"},
            timeout=30,
        )
        assert r.status_code == 422 and field in r.text, (path, raw, r.text)
        tried += 1
    # the extremes that ARE valid are served: any 64-bit seed, sampled
    for seed in (2**64 - 1, -(2**63), 0):
        body = {"model": "tiny", "prompt": "x", "temperature": 1.0, "seed": seed, "max_tokens": 4}
        r = _post(server, C, body, auth)
        assert r.status_code == 200, r.text
        tried += 1
    same = [_post(server, C, {"model": "tiny", "prompt": "x", "temperature": 1.0, "seed": 2**64 - 1,
                              "max_tokens": 6, "ignore_eos": True}, auth).json()["choices"][0]["text"]
            for _ in range(2)]  # fmt: skip
    assert same[0] == same[1]
    health = httpx.get(server.base_url + "/health", timeout=10).json()
    assert health["status"] == "ok" and health["world_size"] == 2 and health["steps"] > steps_before, health
    print(f"hostile inputs tried: {tried}, group crashes: 0, steps {steps_before} -> {health['steps']}")
