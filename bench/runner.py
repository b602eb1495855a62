"""Benchmark runner: runs phases (bench/phases.py, the tpserve HTTP server + loadgen) and merges
them into one table and one JSON file.

    python bench/runner.py run --results DIR --deadline 560 env save v2:2 fastgen:2 hf hfc ds:2
    python bench/runner.py http --results DIR --engine fastgen --tp 2 [--deadline S]
    python bench/runner.py report --results DIR [--out bench/results/<date>-<gpu>.json]

A phase "NAME:N" runs under the DeepSpeed launcher on N GPUs; a bare NAME runs in one process on
GPU 0. Each phase gets a time limit; a phase that would start too close to --deadline is skipped
(and says so), so one device call never outruns its limit. Every phase writes JSON lines to
DIR/phases.jsonl as it goes; `report` reads whatever is there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: Rough seconds each phase needs on 2xH200 (first v2 phase includes the 60-95 s JIT build).
BUDGET = {
    "env": 30,
    "save": 120,
    "v2": 240,
    "fastgen": 180,
    "hf": 150,
    "hfc": 300,
    "ds": 200,
    "profile": 150,
}
T0 = time.monotonic()


def say(msg: str) -> None:
    print(f"[runner {time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def base_env(results: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("MODEL_DIR", "/tmp/bench-model")
    # never the image's "9.0a": DeepSpeed's op builder fails on it
    env["TORCH_CUDA_ARCH_LIST"] = os.environ.get("BENCH_CUDA_ARCH", "9.0")
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("NCCL_NVLS_ENABLE", "0")  # no NVLink multicast on shared hosts
    env["RESULTS"] = str(results)
    pp = [str(REPO / "app" / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    env["PYTHONPATH"] = os.pathsep.join(pp)
    return env


def stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the process group we started (the launcher and its ranks), then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            if sig == signal.SIGTERM:
                os.killpg(proc.pid, signal.SIGKILL)  # stray ranks left in the group
        except subprocess.TimeoutExpired:
            continue
        except ProcessLookupError:
            return


def launcher(n_gpus: int, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "deepspeed.launcher.runner",
        "--num_gpus",
        str(n_gpus),
        "--master_port",
        str(port),
    ]


def run_phase(spec: str, results: Path, deadline: float, port: int) -> None:
    name, _, tp = spec.partition(":")
    budget = BUDGET.get(name, 180)
    left = deadline - (time.monotonic() - T0)
    if left < min(budget, 60):
        say(f"SKIP {spec}: {left:.0f}s left, needs ~{budget}s")
        return
    env = base_env(results)
    env["TAG"] = f"{name}-tp{tp}" if tp else name
    script = str(HERE / "phases.py")
    if tp:
        cmd = [*launcher(int(tp), port), script, name]
    else:
        env["CUDA_VISIBLE_DEVICES"] = env.get("BENCH_SINGLE_GPU", "0")
        cmd = [sys.executable, script, name]
    say(f"START {spec} (limit {left:.0f}s): {' '.join(cmd)}")
    t = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, start_new_session=True)
    try:
        rc = proc.wait(timeout=left)
    except subprocess.TimeoutExpired:
        stop_group(proc, 3)
        rc = -9
    say(f"END {spec} rc={rc} in {time.monotonic() - t:.0f}s")
    with open(results / "phases.jsonl", "a", encoding="utf-8") as fh:
        fh.write(
            json.dumps(
                {
                    "phase": name,
                    "tag": env["TAG"],
                    "stage": "exit",
                    "rc": rc,
                    "s": round(time.monotonic() - t, 1),
                }
            )
            + "\n"
        )


def cmd_run(args: argparse.Namespace) -> None:
    args.results.mkdir(parents=True, exist_ok=True)
    for k, spec in enumerate(args.phases):
        run_phase(spec, args.results, args.deadline, 29500 + k)
    cmd_report(args)


# -- HTTP ------------------------------------------------------------------------------------
def cmd_http(args: argparse.Namespace) -> None:
    """Start tpserve under the DeepSpeed launcher, wait for /health, run loadgen scenarios."""
    import httpx

    args.results.mkdir(parents=True, exist_ok=True)
    env = base_env(args.results)
    tag = f"http-{args.engine}-tp{args.tp}" + (f"-{args.variant}" if args.variant else "")
    log_path = args.results / f"server-{tag.removeprefix('http-')}.log"
    cmd = [
        *launcher(args.tp, args.port + 1),
        "--module",
        "tpserve",
        "--model",
        env["MODEL_DIR"],
        "--engine",
        args.engine,
        "--tp-size",
        str(args.tp),
        "--port",
        str(args.port),
        "--host",
        "127.0.0.1",
        *args.server_arg,
    ]
    say(f"START server: {' '.join(cmd)}")
    with open(log_path, "w", encoding="utf-8") as logf:
        srv = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{args.port}"
    try:
        t = time.monotonic()
        while True:
            if srv.poll() is not None:
                raise SystemExit(f"server exited rc={srv.returncode}; see {log_path}")
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - t > args.start_timeout:
                raise SystemExit(f"server not healthy after {args.start_timeout}s; see {log_path}")
            time.sleep(2)
        say(f"server healthy after {time.monotonic() - t:.0f}s")
        for scen in args.scenario:
            left = args.deadline - (time.monotonic() - T0)
            if left < 40:
                say(f"SKIP scenario {scen}: {left:.0f}s left")
                continue
            lg = [
                sys.executable,
                str(HERE / "loadgen.py"),
                "--url",
                url,
                "--tag",
                tag,
                "--out",
                str(args.results / "phases.jsonl"),
                *scen.split(),
            ]
            say(f"loadgen {scen}")
            before = step_counters(url)
            subprocess.run(lg, env=env, timeout=left, check=False)
            record_step_phases(args.results, tag, scen, before, step_counters(url))
        record_health(args.results, tag, url)
    finally:
        stop_group(srv, 15)
    cmd_report(args)


def step_counters(url: str) -> dict[str, float]:
    """tpserve's step-phase counters from /metrics: {phase: seconds, "steps": n}; {} if none."""
    import httpx

    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith('tpserve_step_seconds_total{phase="'):
            name = line.split('"')[1]
            out[name] = float(line.rsplit(" ", 1)[1])
        elif line.startswith("tpserve_engine_steps_total "):
            out["steps"] = float(line.rsplit(" ", 1)[1])
    return out


def record_health(results: Path, tag: str, url: str) -> None:
    """The engine report after the scenarios (graphs captured and replayed, all-reduce path)."""
    import httpx

    try:
        health = httpx.get(f"{url}/health", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return
    row = {"stage": "health", "tag": tag, "engine_details": health.get("engine_details")}
    with open(results / "phases.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")


def record_step_phases(
    results: Path, tag: str, scenario: str, before: dict[str, float], after: dict[str, float]
) -> None:
    """Mean ms per engine step of each phase of rank 0's engine thread during one scenario."""
    steps = after.get("steps", 0.0) - before.get("steps", 0.0)
    if steps <= 0:
        return
    row: dict[str, Any] = {"stage": "step_phases", "tag": tag, "scenario": scenario}
    row["steps"] = int(steps)
    for name in after:
        if name != "steps":
            row[f"{name}_ms"] = round(1000 * (after[name] - before.get(name, 0.0)) / steps, 3)
    with open(results / "phases.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    say(f"step phases (ms/step): {row}")


# -- report ----------------------------------------------------------------------------------
def load(results: Path) -> list[dict[str, Any]]:
    path = results / "phases.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def cmd_report(args: argparse.Namespace) -> None:
    rows = load(args.results)
    env = next((r for r in rows if r.get("stage") == "env"), {})
    gens = [r for r in rows if r.get("stage") == "generate"]
    https = [r for r in rows if r.get("stage") == "loadgen"]
    print(
        "\n| engine | tag | bs / clients | ms/token (bs=1) | output tok/s "
        "| TTFT p50/p99 ms | ITL p50/p99 ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in gens:
        print(
            f"| {r['phase']} | {r['tag']} | {r['bs']} "
            f"| {r['ms_per_token'] if r['bs'] == 1 else ''} | {r['tok_per_s']} | | |"
        )
    for r in https:
        print(
            f"| http | {r['tag']} | {r['concurrency'] or r['rate']} | "
            f"{r['itl_ms_p50'] if r['concurrency'] == 1 else ''} | {r['output_tok_per_s']} | "
            f"{r['ttft_ms_p50']}/{r['ttft_ms_p99']} | {r['itl_ms_p50']}/{r['itl_ms_p99']} |"
        )
    phases = [r for r in rows if r.get("stage") == "step_phases"]
    if phases:
        names = [k for k in phases[0] if k.endswith("_ms")]
        heads = " | ".join(n[:-3] for n in names)
        print(f"\n| rank 0 engine thread, mean ms per step | {heads} | steps |")
        for r in phases:
            cells = " | ".join(str(r.get(n, "")) for n in names)
            print(f"| {r['tag']} {r['scenario']} | {cells} | {r['steps']} |")
    profiles = [r for r in rows if r.get("stage") == "profile"]
    if profiles:
        kinds = sorted({k for r in profiles for k in r["by_kind_ms_per_step"]})
        print(
            "\n| decode step profile | bs | step ms | host hand-over ms | GPU busy ms | "
            + " | ".join(kinds)
            + " |"
        )
        for r in profiles:
            cells = " | ".join(str(r["by_kind_ms_per_step"].get(k, "")) for k in kinds)
            print(
                f"| {r['tag']} NCCL_NET={r['nccl_net']} | {r['bs']} | {r['step_ms']} "
                f"| {r['host_handover_ms']} | {r['busy_ms_per_step']} | {cells} |"
            )
    toks = {r["tag"]: r["first32"] for r in rows if r.get("stage") == "tokens"}
    for a, b in (("v2-tp1", "v2-tp2"), ("fastgen-tp1", "fastgen-tp2")):
        if a in toks and b in toks:
            same = next(
                (i for i, (x, y) in enumerate(zip(toks[a], toks[b], strict=False)) if x != y), 32
            )
            print(f"greedy tokens {a} vs {b}: identical for the first {same} of 32")
    if args.out:
        gpu = env.get("gpu", "unknown").replace(" ", "-")
        out = args.out if args.out.suffix == ".json" else args.out / f"{dt.date.today()}-{gpu}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(
            json.dumps(
                {
                    "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                    "env": env,
                    "rows": rows,
                },
                indent=1,
            )
        )
        print(f"wrote {out}")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("run", "http", "report"):
        p = sub.add_parser(name)
        p.add_argument("--results", type=Path, default=Path(os.environ.get("OUT", "/tmp/bench")))
        p.add_argument(
            "--out", type=Path, default=None, help="JSON file or folder for the merged result"
        )
        p.add_argument(
            "--deadline", type=float, default=560.0, help="seconds from start for all phases"
        )
        if name == "run":
            p.add_argument("phases", nargs="+")
        if name == "http":
            p.add_argument("--engine", default="fastgen")
            p.add_argument("--tp", type=int, default=2)
            p.add_argument("--port", type=int, default=8011)
            p.add_argument("--variant", default="", help="suffix of the row's tag, e.g. nccl")
            p.add_argument("--start-timeout", type=float, default=300)
            p.add_argument("--server-arg", action="append", default=[])
            p.add_argument(
                "--scenario",
                action="append",
                default=[],
                help='loadgen args, e.g. "--concurrency 1 --requests 8"',
            )
    args = ap.parse_args()
    {"run": cmd_run, "http": cmd_http, "report": cmd_report}[args.cmd](args)


if __name__ == "__main__":
    main()
