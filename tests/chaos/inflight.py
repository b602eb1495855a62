"""Streaming requests that are in flight while a fault is injected; each must END, not hang.

    python tests/chaos/inflight.py --url URL --n 4 --started FILE --timeout 150

Starts N streaming chat completions (ignore_eos, many tokens so they outlive the fault), touches
FILE once every stream has produced its first token, then waits. Each request ends as
"completed" ([DONE] seen), "error" (non-200, broken stream, connection reset) or "hang" (no end
within --timeout). Prints a JSON summary (each request with "end", the wall-clock time it
ended); exit 1 if any request hung.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import httpx


async def one(client: httpx.AsyncClient, args: argparse.Namespace, first: asyncio.Event) -> dict:
    body = {
        "model": args.model,
        "messages": [{"role": "user", "content": "count to a thousand"}],
        "max_tokens": args.max_tokens,
        "ignore_eos": True,
        "temperature": 0,
        "stream": True,
    }
    t0 = time.monotonic()
    chunks = 0
    try:
        async with asyncio.timeout(args.timeout):
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    first.set()
                    return {"outcome": "error", "detail": f"HTTP {r.status_code}", "s": 0.0}
                async for line in r.aiter_lines():
                    if line.startswith("data: "):
                        chunks += 1
                        first.set()
                        if line == "data: [DONE]":
                            return {"outcome": "completed", "chunks": chunks, "s": _dt(t0)}
                        if '"error"' in line:
                            return {"outcome": "error", "detail": line[:200], "s": _dt(t0)}
        return {"outcome": "error", "detail": "stream ended without [DONE]", "s": _dt(t0)}
    except TimeoutError:
        return {"outcome": "hang", "chunks": chunks, "s": _dt(t0)}
    except httpx.HTTPError as exc:
        return {"outcome": "error", "detail": type(exc).__name__, "chunks": chunks, "s": _dt(t0)}


async def timed(client: httpx.AsyncClient, args: argparse.Namespace, first: asyncio.Event) -> dict:
    result = await one(client, args, first)
    result["end"] = round(time.time(), 3)
    return result


def _dt(t0: float) -> float:
    return round(time.monotonic() - t0, 2)


async def main_async(args: argparse.Namespace) -> list[dict]:
    key = os.environ.get("TPSERVE_API_KEY", "")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = httpx.Timeout(args.timeout, connect=10)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, timeout=timeout) as client:
        events = [asyncio.Event() for _ in range(args.n)]
        tasks = [asyncio.create_task(timed(client, args, ev)) for ev in events]
        await asyncio.wait_for(asyncio.gather(*(ev.wait() for ev in events)), 60)
        Path(args.started).touch()
        return list(await asyncio.gather(*tasks))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--model", default="tiny-qwen2-synthetic")
    p.add_argument("--n", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=500)
    p.add_argument("--timeout", type=float, default=150)
    p.add_argument("--started", required=True)
    args = p.parse_args()
    results = asyncio.run(main_async(args))
    counts = {k: sum(r["outcome"] == k for r in results) for k in ("completed", "error", "hang")}
    print(json.dumps({"counts": counts, "requests": results}))
    return 1 if counts["hang"] else 0


if __name__ == "__main__":
    sys.exit(main())
