#!/usr/bin/env python3
"""End-to-end smoke test of a running tpserve API (rank 0, or the replicas' front door).

Runs on the controller against the master's address; exits 1 with the reasons when
a check fails. Checks: /health (status, world size, TP size, every rank's share of
the linear weights), /generate, /v1/models, /v1/chat/completions, a streamed
completion ending with [DONE], bad requests -> 4xx, N concurrent requests -> all
200. Writes a JSON report and prints a table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

SEED_PROMPT = "你好，请介绍一下你自己。"  # noqa: RUF001 (the Chinese seed prompt)


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    latency_s: float | None = None


@dataclass
class Sample:
    index: int
    endpoint: str
    status: int
    latency_s: float
    output_tokens: int
    error: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.output_tokens / self.latency_s if self.latency_s > 0 else 0.0


@dataclass
class Report:
    inventory: str
    url: str
    layout: str
    expected: dict[str, Any]
    started: str
    checks: list[Check] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    load: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, ok: bool, detail: str, latency_s: float | None = None) -> bool:
        self.checks.append(
            Check(
                name,
                bool(ok),
                detail,
                None if latency_s is None else round(latency_s, 4),
            )
        )
        return bool(ok)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def _text_of(body: dict[str, Any]) -> str:
    for key in ("text", "generated_text", "output", "completion"):
        if isinstance(body.get(key), str):
            return body[key]
    choices = body.get("choices") or []
    if choices:
        c = choices[0]
        return (c.get("message") or {}).get("content") or c.get("text") or ""
    return ""


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {"_raw": response.text[:300]}
    return body if isinstance(body, dict) else {"_value": body}


def check_group_health(
    report: Report,
    label: str,
    health: dict[str, Any],
    world: int,
    tp: int,
    hosts: int | None,
    tolerance: float,
) -> None:
    """One TP group's /health: status, sizes, each rank's share of the weights."""
    status = health.get("status")
    report.add(f"{label}.status", status in ("ready", "ok"), f"status={status!r}")
    report.add(
        f"{label}.world_size",
        health.get("world_size") == world,
        f"expected {world}, got {health.get('world_size')}",
    )
    report.add(
        f"{label}.tp_size",
        health.get("tp_size") == tp,
        f"expected {tp}, got {health.get('tp_size')}",
    )
    ranks = health.get("ranks") or []
    report.add(
        f"{label}.ranks",
        sorted(r.get("rank") for r in ranks) == list(range(world)),
        f"ranks {[r.get('rank') for r in ranks]} (expected 0..{world - 1})",
    )
    if hosts is not None:
        seen = sorted({str(r.get("host")) for r in ranks})
        report.add(
            f"{label}.hosts",
            len(seen) == hosts,
            f"ranks on {len(seen)} host(s) {seen}, expected {hosts}",
        )
    want = 1.0 / tp
    for r in ranks:
        frac = r.get("linear_fraction")
        wb, lwb = r.get("weight_bytes") or 0, r.get("linear_weight_bytes") or 0
        ok = isinstance(frac, (int, float)) and abs(frac - want) <= tolerance and wb > 0 and lwb > 0
        report.add(
            f"{label}.rank{r.get('rank')}.shard",
            ok,
            f"host={r.get('host')} weight_bytes={wb} linear_weight_bytes={lwb} "
            f"linear_fraction={frac} (want {want:.3f}±{tolerance})",
        )
    linear = [r.get("linear_weight_bytes") or 0 for r in ranks]
    if len(linear) > 1 and max(linear) > 0:
        spread = (max(linear) - min(linear)) / max(linear)
        report.add(
            f"{label}.balance",
            spread <= tolerance,
            f"linear weight bytes per rank {linear} (spread {spread:.3%})",
        )


def check_front_door(
    client: httpx.Client, report: Report, args: argparse.Namespace, body: dict[str, Any]
) -> None:
    """replicas: the front door's own /health counts the replicas passing their checks; every
    replica's /health (ranks, shards) is read from the replica itself; /metrics is not proxied
    (each replica is scraped on its own); the front door's Prometheus endpoint answers."""
    healthy, total = body.get("healthy_replicas"), body.get("total_replicas")
    report.add(
        "front_door.replicas",
        total == args.replicas and healthy == args.replicas,
        f"{healthy}/{total} healthy, expected {args.replicas}",
    )
    report.add(
        "front_door.replica_urls",
        len(args.replica_url) == args.replicas,
        f"{len(args.replica_url)} replica URL(s) given, expected {args.replicas}",
    )
    for i, url in enumerate(args.replica_url):
        try:
            r = httpx.get(f"{url}/health", timeout=args.timeout)
        except httpx.HTTPError as exc:
            report.add(f"replica{i}.healthy", False, f"{url}: {type(exc).__name__}: {exc}")
            continue
        rep = _json(r)
        report.add(f"replica{i}.healthy", r.status_code == 200, f"{url}: HTTP {r.status_code}")
        tp = args.tp_size
        check_group_health(report, f"replica{i}", rep, tp, tp, None, args.tolerance)
    r = client.get("/metrics")
    report.add(
        "front_door.metrics_not_proxied",
        r.status_code == 404,
        f"/metrics through the front door: HTTP {r.status_code} (each replica is scraped itself)",
    )
    if args.front_door_stats_url:
        try:
            r = httpx.get(f"{args.front_door_stats_url}/metrics", timeout=args.timeout)
            ok = r.status_code == 200 and "haproxy_server_status" in r.text
            detail = f"HTTP {r.status_code}, {r.text.count(chr(10))} lines"
        except httpx.HTTPError as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        report.add("front_door.prometheus", ok, f"{args.front_door_stats_url}/metrics: {detail}")


def check_health(client: httpx.Client, report: Report, args: argparse.Namespace) -> bool:
    t0 = time.perf_counter()
    try:
        r = client.get("/health")
    except httpx.HTTPError as exc:
        return report.add("health.reachable", False, f"{type(exc).__name__}: {exc}")
    body = _json(r)
    if not report.add(
        "health.http",
        r.status_code == 200,
        f"HTTP {r.status_code}",
        time.perf_counter() - t0,
    ):
        report.add("health.body", False, json.dumps(body)[:400])
        return False
    if args.layout == "replicas":
        check_front_door(client, report, args, body)
    else:
        check_group_health(
            report,
            "health",
            body,
            args.world_size,
            args.tp_size,
            args.nodes,
            args.tolerance,
        )
    return True


def check_requests(client: httpx.Client, report: Report, args: argparse.Namespace) -> None:
    auth = client.headers.get("authorization")
    # /generate with the seed prompt.
    t0 = time.perf_counter()
    r = client.post(
        "/generate", json={"prompt": SEED_PROMPT, "max_new_tokens": args.max_new_tokens}
    )
    dt = time.perf_counter() - t0
    text = _text_of(_json(r))
    report.add(
        "generate",
        r.status_code == 200 and len(text.strip()) > 0,
        f"HTTP {r.status_code}, {len(text)} chars: {text[:80]!r}",
        dt,
    )

    r = client.get("/v1/models")
    ids = [m.get("id") for m in _json(r).get("data") or []]
    report.add(
        "openai.models",
        r.status_code == 200 and args.model in ids,
        f"HTTP {r.status_code}, models {ids}",
    )

    chat = {
        "model": args.model,
        "messages": [{"role": "user", "content": SEED_PROMPT}],
        "max_tokens": 32,
    }
    t0 = time.perf_counter()
    r = client.post("/v1/chat/completions", json=chat)
    dt = time.perf_counter() - t0
    body = _json(r)
    text = _text_of(body)
    usage = body.get("usage") or {}
    report.add(
        "openai.chat",
        r.status_code == 200 and len(text) > 0 and usage.get("completion_tokens", 0) > 0,
        f"HTTP {r.status_code}, {usage.get('completion_tokens')} tokens: {text[:60]!r}",
        dt,
    )

    # Streaming: SSE chunks with content, ending with [DONE].
    t0 = time.perf_counter()
    events: list[str] = []
    first_token_s = None
    try:
        with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as s:
            status = s.status_code
            for line in s.iter_lines():
                if line.startswith("data:"):
                    events.append(line[5:].strip())
                    if first_token_s is None:
                        first_token_s = time.perf_counter() - t0
    except httpx.HTTPError as exc:
        status, events = -1, [f"{type(exc).__name__}: {exc}"]
    content = ""
    for e in events[:-1]:
        try:
            delta = (json.loads(e).get("choices") or [{}])[0].get("delta") or {}
            content += delta.get("content") or ""
        except ValueError:
            pass
    report.add(
        "openai.stream",
        status == 200 and len(events) > 1 and events[-1] == "[DONE]" and len(content) > 0,
        f"HTTP {status}, {len(events)} events, "
        f"last {events[-1] if events else None!r}, "
        f"first event after {first_token_s}s, {len(content)} chars",
        time.perf_counter() - t0,
    )

    # Bad requests must be refused with 4xx, not crash the group.
    bad: list[tuple[str, httpx.Response]] = [
        (
            "bad.invalid_json",
            client.post(
                "/generate",
                content=b"{not json",
                headers={"content-type": "application/json"},
            ),
        ),
        (
            "bad.negative_max_new_tokens",
            client.post("/generate", json={"prompt": "x", "max_new_tokens": -5}),
        ),
        (
            "bad.unknown_model",
            client.post("/v1/chat/completions", json={**chat, "model": "no-such-model"}),
        ),
        (
            "bad.empty_messages",
            client.post("/v1/chat/completions", json={**chat, "messages": []}),
        ),
    ]
    if auth:
        with httpx.Client(base_url=str(client.base_url), timeout=client.timeout) as anon:
            bad.append(
                (
                    "bad.missing_api_key",
                    anon.post("/generate", json={"prompt": "x", "max_new_tokens": 4}),
                )
            )
    for name, resp in bad:
        report.add(
            name,
            400 <= resp.status_code < 500,
            f"HTTP {resp.status_code}: {resp.text[:120]!r}",
        )

    if args.layout == "replicas":  # scraped from every replica, not through the front door
        for i, url in enumerate(args.replica_url):
            r = httpx.get(f"{url}/metrics", timeout=args.timeout)
            report.add(
                f"replica{i}.metrics",
                r.status_code == 200 and "tpserve_" in r.text,
                f"{url}/metrics: HTTP {r.status_code}, {len(r.text)} bytes",
            )
        return
    r = client.get("/metrics")
    report.add(
        "metrics",
        r.status_code == 200 and len(r.text) > 0,
        f"HTTP {r.status_code}, {len(r.text)} bytes",
    )


async def _one(client: httpx.AsyncClient, i: int, args: argparse.Namespace) -> Sample:
    payload = {
        "model": args.model,
        "messages": [{"role": "user", "content": f"{SEED_PROMPT} ({i})"}],
        "max_tokens": args.load_max_tokens,
    }
    t0 = time.perf_counter()
    try:
        r = await client.post("/v1/chat/completions", json=payload)
    except httpx.HTTPError as exc:
        return Sample(
            i,
            "/v1/chat/completions",
            -1,
            time.perf_counter() - t0,
            0,
            f"{type(exc).__name__}: {exc}",
        )
    dt = time.perf_counter() - t0
    body = _json(r)
    tokens = int((body.get("usage") or {}).get("completion_tokens") or 0)
    return Sample(
        i,
        "/v1/chat/completions",
        r.status_code,
        dt,
        tokens,
        "" if r.status_code == 200 else r.text[:120],
    )


async def run_load(report: Report, args: argparse.Namespace, headers: dict[str, str]) -> None:
    limits = httpx.Limits(max_connections=args.concurrency)
    async with httpx.AsyncClient(
        base_url=args.url, headers=headers, timeout=args.timeout, limits=limits
    ) as client:
        t0 = time.perf_counter()
        samples = await asyncio.gather(*(_one(client, i, args) for i in range(args.concurrency)))
        wall = time.perf_counter() - t0
    report.samples = list(samples)
    ok = [s for s in samples if s.status == 200]
    lat = [s.latency_s for s in ok]
    tokens = sum(s.output_tokens for s in ok)
    report.load = {
        "concurrency": args.concurrency,
        "max_tokens": args.load_max_tokens,
        "ok": len(ok),
        "wall_s": round(wall, 3),
        "p50_latency_s": round(_pct(lat, 0.50), 3),
        "p95_latency_s": round(_pct(lat, 0.95), 3),
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / wall, 2) if wall > 0 else 0.0,
    }
    report.add(
        "load.all_200",
        len(ok) == args.concurrency,
        f"{len(ok)}/{args.concurrency} answered 200; errors: "
        f"{[(s.index, s.status, s.error) for s in samples if s.status != 200][:3]}",
        wall,
    )
    report.add("load.tokens", tokens > 0, f"{tokens} output tokens in {wall:.2f}s")


def print_table(report: Report) -> None:
    print(f"tpserve smoke test: {report.url}", end=" ")
    print(f"(inventory {report.inventory}, layout {report.layout})")
    print(f"{'check':<34} {'ok':<4} {'s':>7}  detail")
    for c in report.checks:
        lat = f"{c.latency_s:7.3f}" if c.latency_s is not None else " " * 7
        print(f"{c.name:<34} {'ok' if c.ok else 'FAIL':<4} {lat}  {c.detail[:110]}")
    if report.samples:
        head = ("req", "status", "latency_s", "out_tokens", "tok/s")
        print("\n{:>4} {:>6} {:>10} {:>10} {:>8}".format(*head))
        for s in report.samples:
            row = (s.index, s.status, s.latency_s, s.output_tokens, s.tokens_per_s)
            print("{:>4} {:>6} {:>10.3f} {:>10} {:>8.1f}".format(*row))
        ld = report.load
        print(
            f"concurrency {ld['concurrency']}: p50 {ld['p50_latency_s']:.3f}s"
            f"  p95 {ld['p95_latency_s']:.3f}s  {ld['output_tokens']} tokens"
            f" in {ld['wall_s']:.2f}s = {ld['output_tokens_per_s']:.1f} output tok/s"
        )
    verdict = (
        "PASSED"
        if not report.failures
        else f"FAILED ({len(report.failures)} of {len(report.checks)} checks)"
    )
    print(f"\nsmoke test {verdict}")
    for c in report.failures:
        print(f"FAILED {c.name}: {c.detail}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="base URL of the API on the master")
    p.add_argument("--inventory", required=True)
    p.add_argument("--layout", choices=["tp_across_nodes", "replicas"], required=True)
    p.add_argument("--model", required=True, help="served model name")
    p.add_argument("--tp-size", type=int, required=True)
    p.add_argument(
        "--world-size",
        type=int,
        required=True,
        help="ranks of the group (tp_across_nodes)",
    )
    p.add_argument("--nodes", type=int, default=None, help="distinct hosts the ranks must be on")
    p.add_argument("--replicas", type=int, default=1, help="replicas behind the front door")
    p.add_argument(
        "--replica-url",
        action="append",
        default=[],
        help="base URL of one replica (replicas; repeat for each): its /health is checked directly",
    )
    p.add_argument(
        "--front-door-stats-url",
        default="",
        help="replicas: base URL of the front door's stats port (its /metrics must answer)",
    )
    p.add_argument("--tolerance", type=float, default=0.02)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--load-max-tokens", type=int, default=32)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout", type=float, default=300.0)
    p.add_argument("--report", required=True, type=Path)
    p.add_argument(
        "--api-key-file",
        type=Path,
        default=None,
        help="file holding the API key (keep it 0600); default: env TPSERVE_API_KEY, else none",
    )
    return p.parse_args(argv)


def api_key(path: Path | None) -> str:
    """The API key: the first line of PATH when given (never argv), else env TPSERVE_API_KEY."""
    if path is None:
        return os.environ.get("TPSERVE_API_KEY", "")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise SystemExit(f"smoke: cannot read --api-key-file {path}: {exc.strerror}") from None
    key = lines[0].strip() if lines else ""
    if not key:
        raise SystemExit(f"smoke: --api-key-file {path} is empty")
    return key


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    key = api_key(args.api_key_file)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    report = Report(
        inventory=args.inventory,
        url=args.url,
        layout=args.layout,
        expected={
            k: getattr(args, k)
            for k in (
                "model",
                "tp_size",
                "world_size",
                "nodes",
                "replicas",
                "concurrency",
            )
        },
        started=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    with httpx.Client(base_url=args.url, headers=headers, timeout=args.timeout) as client:
        if check_health(client, report, args):
            try:
                check_requests(client, report, args)
                asyncio.run(run_load(report, args, headers))
            except httpx.HTTPError as exc:
                report.add("requests.transport", False, f"{type(exc).__name__}: {exc}")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    out = asdict(report)
    for s, d in zip(report.samples, out["samples"], strict=True):
        d["tokens_per_s"] = round(s.tokens_per_s, 2)
    out["passed"] = not report.failures
    args.report.write_text(json.dumps(out, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print_table(report)
    print(f"report: {args.report}")
    return 0 if not report.failures else 1


if __name__ == "__main__":
    sys.exit(main())
