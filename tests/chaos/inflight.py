"""Streaming requests that are in flight while a fault is injected; each must END, not hang.

    python tests/chaos/inflight.py --url URL --n 4 --started FILE --timeout 150

Starts N streaming chat completions (ignore_eos, many tokens so they outlive the fault), touches
FILE once every stream has produced its first token, then waits. Each request ends as
"completed" ([DONE] seen), "error" (non-200, an SSE error event, broken stream, connection reset)
or "hang" (no end within --timeout). After an SSE error event the stream is read on to its end, and
"ending" says how it ended: "done" ([DONE] only), "sse-error+done" (an error event, then [DONE]: the
server answered), "sse-error+cut" / "sse-error+eof" (an error event, then a broken / closed
connection without [DONE]), "cut" (a broken connection, no error event: ExcName in "detail"),
"eof" (closed without [DONE] or an error event), "http-NNN", "hang"; "error_message" is the error
event's message, "last" the stream's last two data lines. Prints a JSON summary (each request with
"end", the wall-clock time its stream ended); exit 1 if any request hung.
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
    last: list[str] = []
    error: str | None = None

    def ended(outcome: str, ending: str, **extra: object) -> dict:
        out = {"outcome": outcome, "ending": ending, "chunks": chunks, "s": _dt(t0), "last": last}
        if error is not None:
            out["error_message"] = error
        return {**out, **extra}

    try:
        async with asyncio.timeout(args.timeout):
            async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                if r.status_code != 200:
                    first.set()
                    return ended("error", f"http-{r.status_code}", detail=f"HTTP {r.status_code}")
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    chunks += 1
                    first.set()
                    last = [*last[-1:], line[:300]]
                    if line == "data: [DONE]":
                        if error is None:
                            return ended("completed", "done")
                        return ended("error", "sse-error+done")
                    if error is None and line.startswith('data: {"error"'):
                        error = _message(line[6:])  # read on: does [DONE] follow?
        after = "sse-error+" if error is not None else ""
        return ended("error", f"{after}eof", detail="stream ended without [DONE]")
    except TimeoutError:
        return ended("hang", "hang")
    except httpx.HTTPError as exc:
        after = "sse-error+" if error is not None else ""
        return ended("error", f"{after}cut", detail=type(exc).__name__)


def _message(data: str) -> str:
    """An SSE error event's message (`{"error": {"message": ...}}`), else the raw data."""
    try:
        err = json.loads(data)["error"]
    except (ValueError, KeyError, TypeError):
        return data[:300]
    return str(err.get("message", err)) if isinstance(err, dict) else str(err)


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
