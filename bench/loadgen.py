"""Load generator for tpserve's OpenAI-compatible streaming API (/v1/completions, SSE).

    python bench/loadgen.py --url http://127.0.0.1:8000 --concurrency 64 --requests 256
    python bench/loadgen.py --url ... --rate 20 --requests 200        # open loop, Poisson arrivals

Closed loop: N clients, each sends its next request when the last one finished. Open loop:
requests start at exponential intervals of mean 1/rate, whatever is still running.
Prompts are lists of random token ids (the OpenAI completions API accepts a token-id prompt), so
every prompt has exactly --prompt-tokens tokens whatever the tokenizer; `ignore_eos` and
`max_tokens` make every output exactly --output-tokens long. Greedy (temperature 0).

Reports TTFT p50/p99 (request sent → first token), ITL p50/p99 (gap between streamed tokens),
output tok/s and req/s over the whole run; one JSON line, also appended to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx


@dataclass
class Result:
    ok: bool
    ttft: float = 0.0
    itls: list[float] = field(default_factory=list)
    tokens: int = 0
    latency: float = 0.0
    error: str = ""


def make_prompt(rng: random.Random, n_tokens: int, vocab: int) -> list[int]:
    """Random token ids: the API takes them as the prompt (OpenAI-style), so lengths are exact."""
    return [rng.randrange(100, vocab - 100) for _ in range(n_tokens)]


async def one_request(
    client: httpx.AsyncClient, args: argparse.Namespace, prompt: list[int]
) -> Result:
    body = {
        "model": args.model,
        "prompt": prompt,
        "max_tokens": args.output_tokens,
        "temperature": args.temperature,
        **({"top_p": args.top_p} if args.top_p < 1.0 else {}),
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    t0 = time.perf_counter()
    last = None
    res = Result(ok=False)
    usage_tokens = None
    try:
        async with client.stream("POST", f"{args.url}/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:].strip()
                if data == "[DONE]":
                    break
                msg = json.loads(data)
                if msg.get("usage"):
                    usage_tokens = msg["usage"].get("completion_tokens")
                choices = msg.get("choices") or []
                if not choices or not choices[0].get("text"):
                    continue
                now = time.perf_counter()
                if last is None:
                    res.ttft = now - t0
                else:
                    res.itls.append(now - last)
                last = now
                res.tokens += 1
    except httpx.HTTPError as exc:
        res.error = f"{type(exc).__name__}: {exc}"
        return res
    res.latency = time.perf_counter() - t0
    if usage_tokens is not None:
        res.tokens = int(usage_tokens)
    res.ok = res.tokens == args.output_tokens
    if not res.ok and not res.error:
        res.error = f"got {res.tokens} tokens, wanted {args.output_tokens}"
    return res


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    rng = random.Random(args.seed)
    prompts = [make_prompt(rng, args.prompt_tokens, args.vocab) for _ in range(args.requests)]
    limits = httpx.Limits(max_connections=max(args.concurrency, 1) + 64)
    timeout = httpx.Timeout(args.timeout)
    results: list[Result] = []
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        if args.warmup:
            await asyncio.gather(
                *(
                    one_request(client, args, prompts[i % len(prompts)])
                    for i in range(min(args.warmup, args.concurrency or args.warmup))
                )
            )
        t0 = time.perf_counter()
        if args.rate > 0:
            tasks = []
            for p in prompts:
                tasks.append(asyncio.create_task(one_request(client, args, p)))
                await asyncio.sleep(rng.expovariate(args.rate))
            results = list(await asyncio.gather(*tasks))
        else:
            queue = list(reversed(prompts))

            async def worker() -> None:
                while queue:
                    results.append(await one_request(client, args, queue.pop()))

            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
        wall = time.perf_counter() - t0
    ok = [r for r in results if r.ok]
    itls = [x for r in ok for x in r.itls]
    ttfts = [r.ttft for r in ok]
    out_tokens = sum(r.tokens for r in ok)
    return {
        "stage": "loadgen",
        "tag": args.tag,
        "concurrency": 0 if args.rate > 0 else args.concurrency,
        "rate": args.rate,
        "requests": len(results),
        "ok": len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "prompt_tokens": args.prompt_tokens,
        "output_tokens": args.output_tokens,
        "wall_s": round(wall, 3),
        "ttft_ms_p50": round(pct(ttfts, 50) * 1000, 2),
        "ttft_ms_p99": round(pct(ttfts, 99) * 1000, 2),
        "itl_ms_p50": round(pct(itls, 50) * 1000, 3),
        "itl_ms_p99": round(pct(itls, 99) * 1000, 3),
        "itl_ms_mean": round(statistics.fmean(itls) * 1000, 3) if itls else float("nan"),
        "output_tok_per_s": round(out_tokens / wall, 1),
        "req_per_s": round(len(ok) / wall, 3),
    }


def served_model(url: str) -> str:
    """The server's own name for its model: the first id of GET /v1/models."""
    resp = httpx.get(f"{url}/v1/models", timeout=30)
    resp.raise_for_status()
    return str(resp.json()["data"][0]["id"])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument(
        "--model", default="", help="served model name (default: asked from /v1/models)"
    )
    ap.add_argument("--concurrency", type=int, default=1, help="closed loop: parallel clients")
    ap.add_argument(
        "--rate", type=float, default=0.0, help="open loop: requests/s (Poisson); 0 = closed"
    )
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument(
        "--warmup", type=int, default=1, help="requests sent (and dropped) before timing"
    )
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--output-tokens", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=151000, help="prompt ids in [100, vocab-100)")
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the default)")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--tag", default="http")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON line here")
    args = ap.parse_args()
    if args.rate <= 0 and args.concurrency < 1:
        ap.error("--concurrency must be >= 1 (or give --rate)")
    if not args.model:
        args.model = served_model(args.url)
    summary = asyncio.run(run(args))
    line = json.dumps(summary)
    print(line, flush=True)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")


if __name__ == "__main__":
    main()
