"""Round-robin HTTP proxy in front of independent tpserve replicas (layout ``replicas``).

Each replica is a complete tpserve TP group with its own rank-0 HTTP endpoint. The router
checks every replica's ``GET /health`` every few seconds, sends each request to the next
healthy replica (round-robin), skips a replica whose connection fails (and marks it down),
and streams responses (SSE included) through byte for byte. ``GET /health`` on the router
lists the replicas and their last health payloads.

Run: ``python -m tpserve.router --replica http://10.0.0.11:8001 --replica ... --port 8000``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx2 as httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.background import BackgroundTask

LOG = logging.getLogger("tpserve.router")

# Hop-by-hop headers (RFC 9110 7.6.1) and the ones the proxy recomputes.
_DROP_REQUEST_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
_DROP_RESPONSE_HEADERS = frozenset(
    {"content-length", "connection", "keep-alive", "transfer-encoding", "trailer", "upgrade"}
)
_METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass
class Replica:
    """One upstream TP group and what the last health check saw."""

    url: str
    healthy: bool = False
    last_error: str | None = None
    last_check: float | None = None
    health: dict[str, Any] | None = None
    requests: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "healthy": self.healthy,
            "last_error": self.last_error,
            "last_check_age_s": None
            if self.last_check is None
            else round(time.monotonic() - self.last_check, 1),
            "requests": self.requests,
            "health": self.health,
        }


@dataclass
class ReplicaPool:
    """The replicas and the round-robin cursor."""

    replicas: list[Replica]
    _cursor: int = field(default=0, repr=False)

    @classmethod
    def from_urls(cls, urls: Sequence[str]) -> ReplicaPool:
        if not urls:
            raise ValueError("at least one --replica URL is required")
        return cls([Replica(url.rstrip("/")) for url in urls])

    def healthy(self) -> list[Replica]:
        return [r for r in self.replicas if r.healthy]

    def next_order(self) -> list[Replica]:
        """Healthy replicas, starting at the round-robin cursor (the cursor advances by one)."""
        healthy = self.healthy()
        if not healthy:
            return []
        start = self._cursor % len(healthy)
        self._cursor += 1
        return healthy[start:] + healthy[:start]

    def mark_down(self, replica: Replica, error: str) -> None:
        if replica.healthy:
            LOG.warning("replica %s marked down: %s", replica.url, error)
        replica.healthy = False
        replica.last_error = error


async def check_replica(client: httpx.AsyncClient, replica: Replica, timeout: float) -> None:
    """One active health check: healthy iff GET /health answers 200."""
    try:
        response = await client.get(f"{replica.url}/health", timeout=timeout)
        payload: Any
        try:
            payload = response.json()
        except ValueError:
            payload = {"body": response.text[:200]}
        healthy = response.status_code == 200
        replica.health = payload if isinstance(payload, dict) else {"body": payload}
        replica.last_error = None if healthy else f"/health answered {response.status_code}"
    except httpx.HTTPError as exc:
        healthy = False
        replica.health = None
        replica.last_error = f"{type(exc).__name__}: {exc}"
    if healthy != replica.healthy:
        LOG.info(
            "replica %s is now %s", replica.url, "healthy" if healthy else f"down ({replica.last_error})"
        )
    replica.healthy = healthy
    replica.last_check = time.monotonic()


async def check_all(client: httpx.AsyncClient, pool: ReplicaPool, timeout: float) -> None:
    await asyncio.gather(*(check_replica(client, r, timeout) for r in pool.replicas))


async def _health_loop(client: httpx.AsyncClient, pool: ReplicaPool, interval: float, timeout: float) -> None:
    while True:
        await check_all(client, pool, timeout)
        await asyncio.sleep(interval)


def _unavailable(message: str) -> JSONResponse:
    return JSONResponse(
        status_code=503,
        content={"error": {"message": message, "type": "unavailable", "code": 503}},
        headers={"Retry-After": "2"},
    )


def create_app(
    pool: ReplicaPool,
    *,
    health_interval: float = 3.0,
    health_timeout: float = 2.0,
    request_timeout: float = 600.0,
) -> FastAPI:
    """The router app; the health loop runs for the app's lifetime."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        timeout = httpx.Timeout(request_timeout, connect=min(5.0, request_timeout))
        async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=1000)) as client:
            app.state.client = client
            await check_all(client, pool, health_timeout)
            task = asyncio.create_task(_health_loop(client, pool, health_interval, health_timeout))
            try:
                yield
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app = FastAPI(title="tpserve router", lifespan=lifespan)
    app.state.pool = pool

    @app.get("/health")
    async def health() -> JSONResponse:
        healthy = len(pool.healthy())
        body = {
            "status": "ready" if healthy else "unavailable",
            "role": "router",
            "healthy_replicas": healthy,
            "total_replicas": len(pool.replicas),
            "replicas": [r.as_dict() for r in pool.replicas],
        }
        return JSONResponse(status_code=200 if healthy else 503, content=body)

    @app.api_route("/{path:path}", methods=_METHODS)
    async def proxy(path: str, request: Request) -> Response:
        client: httpx.AsyncClient = request.app.state.client
        body = await request.body()
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST_HEADERS]
        tried = 0
        for replica in pool.next_order():
            tried += 1
            upstream = client.build_request(
                request.method,
                f"{replica.url}/{path}",
                params=request.query_params.multi_items(),
                headers=headers,
                content=body,
            )
            try:
                response = await client.send(upstream, stream=True)
            except httpx.TransportError as exc:
                # Nothing reached the client yet: mark it down and try the next replica.
                pool.mark_down(replica, f"{type(exc).__name__}: {exc}")
                continue
            replica.requests += 1
            out_headers = {
                k: v for k, v in response.headers.items() if k.lower() not in _DROP_RESPONSE_HEADERS
            }
            out_headers["x-tpserve-replica"] = replica.url
            return StreamingResponse(
                response.aiter_raw(),
                status_code=response.status_code,
                headers=out_headers,
                background=BackgroundTask(response.aclose),
            )
        if tried:
            return _unavailable(f"all {tried} healthy replicas failed to answer")
        return _unavailable("no healthy replica")

    return app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="tpserve-router", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--replica",
        action="append",
        required=True,
        metavar="URL",
        help="base URL of one replica's rank-0 API (repeat for each)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--health-interval", type=float, default=3.0, help="seconds between health checks")
    parser.add_argument("--health-timeout", type=float, default=2.0)
    parser.add_argument("--request-timeout", type=float, default=600.0)
    parser.add_argument("--log-level", default="info")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(
        ReplicaPool.from_urls(args.replica),
        health_interval=args.health_interval,
        health_timeout=args.health_timeout,
        request_timeout=args.request_timeout,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
