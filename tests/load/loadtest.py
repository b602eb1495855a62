"""Closed-loop load on a tpserve API: N requests, C concurrent clients, all accounted for.

    python tests/load/loadtest.py --url http://10.89.27.11:8000 --requests 500 --concurrency 32

Each request is a /v1/chat/completions call with a client timeout. A request passes when it gets
200, or 429/503 WITH a Retry-After header (the queue is full / the service is draining). Anything
else - another status, a 429/503 without Retry-After, a connection error or a client timeout (a
hang) - is a failure. Prints p50/p99 latency and the count by outcome, writes a JSON summary
(--json) and exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

# One percentile for the benchmark and the load test: bench/loadgen.py's.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from loadgen import pct


@dataclass
class Outcome:
    status: str  # "200", "429", ..., "timeout", "error:<Exception>"
    seconds: float
    ok: bool


async def one_request(client: httpx.AsyncClient, args: argparse.Namespace, i: int) -> Outcome:
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": f"request {i}: tell me about tensor parallelism"}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
    }
    t0 = time.monotonic()
    try:
        r = await client.post("/v1/chat/completions", json=body, timeout=args.timeout)
    except httpx.TimeoutException:
        return Outcome("timeout", time.monotonic() - t0, False)
    except httpx.HTTPError as exc:
        return Outcome(f"error:{type(exc).__name__}", time.monotonic() - t0, False)
    dt = time.monotonic() - t0
    if r.status_code == 200:
        ok = bool(r.json().get("choices"))
    elif r.status_code in (429, 503):
        ok = "retry-after" in r.headers
    else:
        ok = False
    label = str(r.status_code) if ok or r.status_code == 200 else f"{r.status_code}-bad"
    return Outcome(label, dt, ok)


async def run(args: argparse.Namespace) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(
        max_connections=args.concurrency, max_keepalive_connections=args.concurrency
    )
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.requests):
        queue.put_nowait(i)
    outcomes: list[Outcome] = []
    done = 0

    async with httpx.AsyncClient(base_url=args.url, headers=headers, limits=limits) as client:

        async def worker() -> None:
            nonlocal done
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                outcomes.append(await one_request(client, args, i))
                done += 1
                if done % max(1, args.requests // 10) == 0:
                    print(f"loadtest: {done}/{args.requests} done", flush=True)

        t0 = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.monotonic() - t0

    counts = Counter(o.status for o in outcomes)
    latencies = [o.seconds for o in outcomes if o.status == "200"]
    return {
        "url": args.url,
        "requests": args.requests,
        "concurrency": args.concurrency,
        "max_tokens": args.max_tokens,
        "answered": len(outcomes),
        "failed": sum(not o.ok for o in outcomes),
        "by_status": dict(sorted(counts.items())),
        "p50_s": round(pct(latencies, 50), 3),
        "p99_s": round(pct(latencies, 99), 3),
        "mean_s": round(statistics.fmean(latencies), 3) if latencies else None,
        "wall_s": round(wall, 1),
        "throughput_rps": round(len(outcomes) / wall, 2) if wall else None,
    }


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--url", required=True)
    p.add_argument("--model", default="tiny-qwen2-synthetic")
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--timeout", type=float, default=300.0, help="client timeout per request (s)")
    p.add_argument("--json", help="write the summary here")
    args = p.parse_args()
    args.api_key = os.environ.get("TPSERVE_API_KEY", "")
    summary = asyncio.run(run(args))
    print(json.dumps(summary, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2)
    lost = args.requests - summary["answered"]
    if summary["failed"] or lost:
        print(f"loadtest: FAILED: {summary['failed']} bad outcomes, {lost} lost", file=sys.stderr)
        return 1
    print(f"loadtest: all {args.requests} requests answered (200, or 429/503 + Retry-After)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
