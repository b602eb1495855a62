"""The replicas router, over real sockets on loopback: real uvicorn servers play the upstreams."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx2 as httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from tpserve.router import ReplicaPool, create_app, parse_args


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A uvicorn server on 127.0.0.1 in a background thread."""

    def __init__(self, app: FastAPI, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def start(self) -> Server:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)


def upstream(name: str) -> FastAPI:
    """A stand-in replica: answers who it is, streams SSE slowly, can turn unhealthy."""
    app = FastAPI()
    app.state.healthy = True

    @app.get("/health")
    async def health() -> JSONResponse:
        if not app.state.healthy:
            return JSONResponse(status_code=503, content={"status": "loading"})
        return JSONResponse({"status": "ready", "name": name, "world_size": 1})

    @app.post("/generate")
    async def generate(request: Request) -> JSONResponse:
        body = await request.json()
        if "prompt" not in body:
            return JSONResponse(status_code=422, content={"detail": "prompt missing"})
        return JSONResponse(
            {
                "replica": name,
                "echo": body["prompt"],
                "auth": request.headers.get("authorization"),
                "query": dict(request.query_params),
            }
        )

    @app.post("/v1/completions")
    async def stream() -> StreamingResponse:
        async def events() -> Iterator[bytes]:
            for i in range(3):
                yield f'data: {{"i": {i}, "t": {time.monotonic()}}}\n\n'.encode()
                await asyncio.sleep(0.3)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return app


@pytest.fixture
def replicas() -> Iterator[list[tuple[FastAPI, Server]]]:
    servers = []
    for name in ("a", "b"):
        app = upstream(name)
        servers.append((app, Server(app).start()))
    yield servers
    for _, server in servers:
        server.stop()


def _router(urls: list[str], interval: float = 0.2) -> Server:
    return Server(
        create_app(ReplicaPool.from_urls(urls), health_interval=interval, health_timeout=1.0)
    ).start()


def _wait(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.05)


def _healthy_replicas(router: Server) -> int:
    return httpx.get(f"{router.url}/health").json()["healthy_replicas"]


def _answering(router: Server, requests: int = 4) -> set[str]:
    """The replicas that answer `requests` /generate calls through the router."""
    return {
        httpx.post(f"{router.url}/generate", json={"prompt": "x"}).json()["replica"] for _ in range(requests)
    }


def test_round_robin_and_passthrough(replicas) -> None:
    router = _router([s.url for _, s in replicas])
    try:
        seen = []
        for i in range(4):
            r = httpx.post(
                f"{router.url}/generate?x=1", json={"prompt": f"p{i}"}, headers={"Authorization": "Bearer k"}
            )
            assert r.status_code == 200
            body = r.json()
            assert body["echo"] == f"p{i}"
            assert body["auth"] == "Bearer k"
            assert body["query"] == {"x": "1"}
            assert r.headers["x-tpserve-replica"] in {s.url for _, s in replicas}
            seen.append(body["replica"])
        assert seen in (["a", "b", "a", "b"], ["b", "a", "b", "a"])
        # Upstream 4xx pass through unchanged.
        bad = httpx.post(f"{router.url}/generate", json={})
        assert bad.status_code == 422
        assert bad.json() == {"detail": "prompt missing"}
    finally:
        router.stop()


def test_health_lists_replicas_and_skips_unhealthy(replicas) -> None:
    (app_a, _), (_, server_b) = replicas
    router = _router([s.url for _, s in replicas])
    try:
        health = httpx.get(f"{router.url}/health").json()
        assert health["status"] == "ready"
        assert health["healthy_replicas"] == 2
        assert [r["health"]["name"] for r in health["replicas"]] == ["a", "b"]

        app_a.state.healthy = False
        _wait(lambda: _healthy_replicas(router) == 1)
        assert _answering(router) == {"b"}

        app_a.state.healthy = True
        _wait(lambda: _healthy_replicas(router) == 2)
        assert _answering(router) == {"a", "b"}
        assert server_b.url in {r["url"] for r in httpx.get(f"{router.url}/health").json()["replicas"]}
    finally:
        router.stop()


def test_dead_replica_is_skipped_before_the_next_check(replicas) -> None:
    (_, server_a), (_, server_b) = replicas
    # A long interval: only the connection failure itself can take replica a out of the rotation.
    router = _router([server_a.url, server_b.url], interval=60)
    try:
        server_a.stop()
        for _ in range(4):
            r = httpx.post(f"{router.url}/generate", json={"prompt": "x"})
            assert r.status_code == 200
            assert r.json()["replica"] == "b"
        health = httpx.get(f"{router.url}/health").json()
        assert [r["healthy"] for r in health["replicas"]] == [False, True]
        assert health["replicas"][0]["last_error"]
    finally:
        router.stop()


def test_no_healthy_replica_is_503() -> None:
    router = _router([f"http://127.0.0.1:{_free_port()}"])
    try:
        health = httpx.get(f"{router.url}/health")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable"
        r = httpx.post(f"{router.url}/generate", json={"prompt": "x"})
        assert r.status_code == 503
        assert r.json()["error"]["type"] == "unavailable"
    finally:
        router.stop()


def test_sse_streams_through_incrementally(replicas) -> None:
    router = _router([replicas[0][1].url])
    try:
        arrivals = []
        lines = []
        with httpx.stream("POST", f"{router.url}/v1/completions", json={"stream": True}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            for line in r.iter_lines():
                if line:
                    lines.append(line)
                    arrivals.append(time.monotonic())
        assert lines[-1] == "data: [DONE]"
        assert len(lines) == 4
        # Upstream sleeps 0.3 s between events: buffering would deliver them all at once.
        assert arrivals[2] - arrivals[0] > 0.4
    finally:
        router.stop()


def test_cli_requires_a_replica() -> None:
    with pytest.raises(SystemExit):
        parse_args([])
    args = parse_args(["--replica", "http://h:1", "--replica", "http://h:2", "--port", "9"])
    assert args.replica == ["http://h:1", "http://h:2"]
    with pytest.raises(ValueError, match="replica"):
        ReplicaPool.from_urls([])
