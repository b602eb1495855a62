"""Pure pieces: sampling, stop strings / incremental decoding, schemas, engine helpers, body limit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from tpserve.core.sampling import SamplingParams, filter_logits, make_generator, sample
from tpserve.core.textstream import TextStream
from tpserve.engines import EngineError, EngineOptions, select
from tpserve.engines.base import check_sharding, full_linear_weight_elements
from tpserve.frontend.limits import BodyLimitMiddleware
from tpserve.frontend.schemas import ChatCompletionRequest, GenerateRequest


# -- sampling ----------------------------------------------------------------------------------
def test_greedy_is_argmax_and_top_k_1_is_greedy() -> None:
    logits = torch.tensor([0.1, 3.0, 2.9, -1.0])
    assert sample(logits, SamplingParams(), None) == 1
    p = SamplingParams(temperature=1.5, top_k=1)
    assert p.greedy and sample(logits, p, make_generator(p)) == 1


def test_top_k_and_top_p_masks() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    assert torch.isinf(filter_logits(logits, top_k=2, top_p=1.0)[2:]).all()
    kept = ~torch.isinf(filter_logits(logits, top_k=0, top_p=0.7))
    assert kept.tolist() == [True, True, False, False]  # 0.5 + 0.3 reaches 0.7
    kept = ~torch.isinf(filter_logits(logits, top_k=0, top_p=0.1))
    assert kept.tolist() == [True, False, False, False]  # the top token is always kept


def test_seeded_sampling_is_reproducible_and_follows_distribution() -> None:
    logits = torch.zeros(50)
    params = SamplingParams(temperature=1.0, seed=7)
    a = [sample(logits, params, g) for g in [make_generator(params)] for _ in range(20)]
    b = [sample(logits, params, g) for g in [make_generator(params)] for _ in range(20)]
    assert a == b and len(set(a)) > 5
    peaked = torch.tensor([10.0, 0.0, 0.0])
    gen = make_generator(SamplingParams(temperature=1.0, seed=1))
    picks = [sample(peaked, SamplingParams(temperature=1.0), gen) for _ in range(200)]
    assert picks.count(0) > 190


# -- incremental text with stop strings ---------------------------------------------------------
def _char_decoder(vocab: list[str]):
    return lambda ids: "".join(vocab[i] for i in ids)


def test_stop_string_across_tokens_is_cut_and_held_back() -> None:
    vocab = ["Hel", "lo", " wo", "rld", " ST", "OP", " after"]
    stream = TextStream(_char_decoder(vocab), stop=["STOP"])
    out = [stream.add(i) for i in range(5)]  # "Hello world ST": " ST" may start STOP → held
    assert "".join(out) == "Hello world "
    assert stream.add(5) == "" and stream.stopped  # "STOP" completed: nothing after it
    assert stream.text == "Hello world " and stream.add(6) == ""


def test_held_back_prefix_released_when_not_a_stop() -> None:
    vocab = ["a", "S", "b"]
    stream = TextStream(_char_decoder(vocab), stop=["ST"])
    assert stream.add(0) == "a"
    assert stream.add(1) == ""  # could become "ST"
    assert stream.add(2) == "Sb"
    assert stream.flush() == ""


def test_partial_utf8_is_not_emitted_with_real_tokenizer(model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    text = "你好，请介绍一下你自己。"
    byte_ids = [tok.convert_tokens_to_ids(t) for t in tok.tokenize(text)]
    assert tok.decode(byte_ids) == text
    stream = TextStream(lambda ids: tok.decode(ids, skip_special_tokens=True))
    pieces = [stream.add(i) for i in byte_ids] + [stream.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)


# -- schemas -----------------------------------------------------------------------------------
def test_schemas() -> None:
    g = GenerateRequest(prompt="hi", stop="x")
    assert g.stop_list() == ["x"] and g.max_new_tokens is None
    c = ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ],
            "unknown_field": 1,
        }
    )
    assert c.n == 1 and c.messages[0].text() == "ab"
    with pytest.raises(ValueError):
        GenerateRequest(prompt="")
    with pytest.raises(ValueError):
        ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "wizard", "content": "x"}]})


# -- engine helpers (real model, no DeepSpeed needed) -------------------------------------------
def test_full_linear_count_matches_real_model(model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tpserve.engines.autotp import linear_weight_bytes

    cfg = json.loads((model_dir / "config.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert linear_weight_bytes(model) == 4 * full_linear_weight_elements(cfg)


def test_check_sharding() -> None:
    assert check_sharding(0.5, 2) is None and check_sharding(0.25, 4) is None
    msg = check_sharding(1.0, 2)
    assert msg is not None and "NOT applied" in msg


def test_engine_selection_on_cpu(model_dir: Path) -> None:
    opts = EngineOptions(model_dir=str(model_dir), device="cpu")
    assert select("auto", opts) == ("autotp", "auto: autotp because no CUDA device")
    assert select("autotp", opts)[0] == "autotp"
    with pytest.raises(EngineError, match="fastgen was asked for"):
        select("fastgen", opts)
    with pytest.raises(EngineError, match="unknown engine"):
        select("vllm", opts)


# -- body limit middleware ---------------------------------------------------------------------
def test_body_limit_checks_header_and_real_bytes() -> None:
    app = FastAPI()
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=100)

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        return {"n": len(await request.body())}

    client = TestClient(app)
    assert client.post("/echo", content=b"x" * 100).json() == {"n": 100}
    assert client.post("/echo", content=b"x" * 101).status_code == 413
    r = client.post("/echo", content=iter([b"x" * 60, b"x" * 60]))  # chunked, no Content-Length
    assert r.status_code == 413 and "exceeds 100 bytes" in r.json()["error"]["message"]


def test_cli_is_generated_from_serve_config(model_dir: Path) -> None:
    """Every ServeConfig setting has a flag whose default IS the field's default (one owner)."""
    import dataclasses

    from tpserve.cli import build_parser, cli_fields, config_from_args, flag_of
    from tpserve.config import ServeConfig

    parser = build_parser()
    flags = {a.dest: a for a in parser._actions}
    for f in cli_fields():
        assert f.name in flags, f.name
        assert flags[f.name].default == f.default, (f.name, flags[f.name].default, f.default)
    cfg, _, _ = config_from_args(["--model", str(model_dir)])
    defaults = {
        f.name: f.default
        for f in dataclasses.fields(ServeConfig)
        if f.name not in ("model_dir", "served_model_name", "api_key")
    }
    assert {k: getattr(cfg, k) for k in defaults} == defaults
    assert cfg.served_model_name == model_dir.name
    cfg, _, _ = config_from_args(["--model", str(model_dir), "--request-timeout", "300", "--no-batch-decode"])
    assert cfg.request_timeout_s == 300 and cfg.batch_decode is False
    assert flag_of(next(f for f in cli_fields() if f.name == "batch_decode")) == "--no-batch-decode"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "0"], "--port must be ≥ 1"),
        (["--port", "70000"], "--port must be ≤ 65535"),
        (["--request-timeout", "0"], "--request-timeout must be > 0"),
        (["--max-batch-tokens", "-1"], "--max-batch-tokens must be ≥ 0"),
        (["--engine", "vllm"], "invalid choice"),
    ],
)
def test_cli_bounds_come_from_the_fields(
    model_dir: Path, args: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    from tpserve.cli import config_from_args

    with pytest.raises(SystemExit) as exc:
        config_from_args(["--model", str(model_dir), *args])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_gpu_collector_reads_nvml_at_scrape_time() -> None:
    """The NVML calls the collector makes, against a stand-in for the driver's library (no GPU
    here); a value a GPU does not report is left out, not zero."""
    from types import SimpleNamespace

    from prometheus_client import CollectorRegistry, generate_latest

    from tpserve.core.metrics import GpuCollector

    def no_power(_h: object) -> float:
        raise RuntimeError("not supported")

    nvml = SimpleNamespace(
        NVML_TEMPERATURE_GPU=0,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUUID=lambda h: f"GPU-{h}".encode(),
        nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(gpu=50 + h),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(used=10 * 2**30, total=24 * 2**30),
        nvmlDeviceGetPowerUsage=lambda h: 150000 if h == 0 else no_power(h),
        nvmlDeviceGetTemperature=lambda h, _kind: 60,
    )
    reg = CollectorRegistry()
    reg.register(GpuCollector(nvml))
    text = generate_latest(reg).decode()
    assert 'tpserve_gpu_utilization_ratio{gpu="1",uuid="GPU-1"} 0.51' in text
    assert 'tpserve_gpu_memory_total_bytes{gpu="0",uuid="GPU-0"} 2.5769803776e+10' in text
    assert 'tpserve_gpu_power_watts{gpu="0",uuid="GPU-0"} 150.0' in text
    assert 'tpserve_gpu_power_watts{gpu="1"' not in text


def test_serving_properties_become_flags_and_flags_win(model_dir: Path, tmp_path: Path) -> None:
    from tpserve.cli import config_from_args

    props = tmp_path / "serving.properties"
    props.write_text(
        "# DJLServing\nengine=DeepSpeed\n"
        f"option.model_id={model_dir}\noption.tensor_parallel_degree=2\noption.data_type=fp16\n"
        "option.max_new_tokens=300\noption.model_loading_timeout=1800\n"
    )
    cfg, _, _ = config_from_args(["--serving-properties", str(props)])
    assert (cfg.engine, cfg.tp_size, cfg.dtype, cfg.max_new_tokens) == ("auto", 2, "float16", 300)
    assert cfg.model_dir == str(model_dir.resolve())
    cfg, _, _ = config_from_args(["--serving-properties", str(props), "--max-new-tokens", "64"])
    assert cfg.max_new_tokens == 64  # the command line wins


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("option.rolling_batch=auto\n", "unknown key 'option.rolling_batch'"),
        ("engine=vLLM\n", "engine='vLLM'"),
        ("option.tensor_parallel_degree=four\n", "option.tensor_parallel_degree='four': not an integer"),
        ("option.data_type=int3\n", "option.data_type='int3'"),
        ("option.model_id=Qwen/Qwen2.5-7B\n", "not a local model directory"),
        ("just words\n", "is not key=value"),
    ],
)
def test_serving_properties_refuse_with_the_key(
    tmp_path: Path, model_dir: Path, body: str, message: str, capsys: pytest.CaptureFixture
) -> None:
    from tpserve.cli import config_from_args

    props = tmp_path / "serving.properties"
    props.write_text(body)
    with pytest.raises(SystemExit) as exc:
        config_from_args(["--serving-properties", str(props), "--model", str(model_dir)])
    assert exc.value.code == 2 and message in capsys.readouterr().err


# -- the step watchdog -------------------------------------------------------------------------
def test_the_step_watchdog_exits_at_its_limit_not_at_its_next_tick() -> None:
    """A step that runs past --step-timeout exits the rank (code 3) at the limit itself. Before, the
    watchdog looked once a second from its start: a step begun 0.5 s after it was seen 4.5 s later
    with a 4 s limit (the lab's partition: the stream was cut 33.5-34.0 s after the DROP, limit 33 s)."""
    import os
    import subprocess
    import sys
    import time

    import tpserve

    child = (
        "import time\n"
        "from tpserve.control.ranks import Watchdog\n"
        "w = Watchdog(4.0)\n"
        "time.sleep(0.5)\n"
        "w.busy()\n"
        "print(time.monotonic(), flush=True)\n"
        "time.sleep(30)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(tpserve.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", child], env=env, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    busy_at = float(proc.stdout.readline())
    code = proc.wait(timeout=30)
    took = time.monotonic() - busy_at  # CLOCK_MONOTONIC: one clock for both processes
    assert code == 3 and 4.0 <= took < 4.4, (code, took)


def test_the_step_watchdog_runs_the_fatal_hooks_without_its_lock() -> None:
    """dist.fatal's hooks run while another thread reads the watchdog: rank 0's engine core waits
    there (up to 2 s) for its I/O thread to send the front end Stopped(why), and that thread's
    status reads step_age (Watchdog.busy_for). With fatal called under the watchdog's lock the I/O
    thread blocked, Stopped never went out, and the lab's mid-stream partition ended as a cut
    connection (RemoteProtocolError) 2 s after the step timeout instead of an SSE error event."""
    import os
    import subprocess
    import sys

    import tpserve

    child = (
        "import threading, time\n"
        "from tpserve.control import dist\n"
        "from tpserve.control.ranks import Watchdog\n"
        "w = Watchdog(1.0)\n"
        "def hook(message):\n"
        "    t = threading.Thread(target=w.busy_for, daemon=True)\n"
        "    t.start()\n"
        "    t.join(2.0)\n"
        "    print('blocked' if t.is_alive() else 'answered', flush=True)\n"
        "dist.on_fatal(hook)\n"
        "w.busy()\n"
        "time.sleep(30)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(tpserve.__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=30)
    seen = (proc.returncode, proc.stdout.strip())
    assert seen == (3, "answered"), (seen, proc.stderr[-500:])


def test_health_says_stalled_before_the_group_exits_by_default() -> None:
    """/health's stall threshold is below both timeouts at which a partitioned group exits (the control
    channel's, --heartbeat-timeout, and the step watchdog's): with 30 s = the heartbeat timeout, a lab
    partition took the group down 30.1 s after the DROP and /health never said 503 before it did."""
    from tpserve.config import ServeConfig

    cfg = ServeConfig()
    assert cfg.stall_timeout_s + 5 <= min(cfg.heartbeat_timeout_s, cfg.step_timeout_s), cfg
    # idle: the heartbeat rule's threshold (max of the stall timeout and two heartbeat intervals) too
    assert max(cfg.stall_timeout_s, 2 * cfg.heartbeat_interval_s) + 5 <= cfg.heartbeat_timeout_s


def test_a_worker_logs_where_its_step_time_went_every_n_steps_and_never_when_off() -> None:
    from tpserve.control.ranks import StepTimes

    off = StepTimes(1, 0)
    assert all(off.add(0.001, 0.002, 0.0) is None for _ in range(10))
    times = StepTimes(1, 2)
    assert times.add(0.001, 0.004, 0.0001) is None
    line = times.add(0.003, 0.002, 0.0003)
    assert line == "rank 1: 2 steps, mean ms per step: wait for rank 0 2.000, run 3.000, report 0.200"
    assert times.n == 0 and times.add(0.001, 0.001, 0.001) is None  # reset after each line
