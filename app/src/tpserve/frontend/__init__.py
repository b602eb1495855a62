"""The front end, on rank 0 (its own process by default): HTTP (FastAPI) reference /generate,
OpenAI-compatible /v1/*, /health, /metrics.

Every error is JSON `{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status;
bad input never produces a 500 and never hangs (every wait is bounded by the request timeout).

| module | job |
|---|---|
| `app` | `build_app`: middleware, error handlers, the two routers, request counting |
| `errors` | `APIError`, the JSON error body, the exception handlers |
| `guards` | API key, admission (loading / draining / queue full), model name and length limits |
| `generation` | sampling parameters from a body; waiting for a request's final event |
| `native_routes` | `/health`, `/metrics`, `/generate` |
| `openai_routes` | `/v1/models`, `/v1/completions`, `/v1/chat/completions` |
| `sse` | server-sent events: the stream, its pre-serialised per-token chunks |
| `schemas` | pydantic request/response bodies with every field's bounds |
| `limits` | ASGI middleware: request body size limit, per-response counting |
| `serving_properties` | DJL-style `serving.properties` read as configuration |
| `server` | uvicorn (the main thread of the front end process, or of rank 0 with --no-frontend-process) |
| `process` | the front end process (`python -m tpserve.frontend.process`), a child of rank 0 |
| `core_client` | `CoreClient`: the engine core over ZeroMQ as `Service` sees a scheduler; detokenizes |
"""

from tpserve.frontend.app import build_app

__all__ = ["build_app"]
