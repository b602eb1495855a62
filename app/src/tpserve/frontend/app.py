"""`build_app`: the FastAPI app rank 0 serves (middleware, error handlers, routes)."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI

from tpserve.core.service import Service
from tpserve.frontend.errors import install_error_handlers
from tpserve.frontend.guards import Guards
from tpserve.frontend.limits import BodyLimitMiddleware
from tpserve.frontend.native_routes import native_router
from tpserve.frontend.openai_routes import openai_router

ENDPOINTS = ("/generate", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")


def build_app(service: Service) -> FastAPI:
    cfg = service.config
    app = FastAPI(title="tpserve", version="0.1.0", docs_url=None, redoc_url=None)
    app.add_middleware(
        BodyLimitMiddleware, max_body_bytes=cfg.max_body_bytes, on_response=_count(service), paths=ENDPOINTS
    )
    install_error_handlers(app)
    guards = Guards(service)
    app.include_router(native_router(service, guards))
    app.include_router(openai_router(service, guards))
    return app


def _count(service: Service) -> Callable[[str, int], None]:
    """Count every answer by endpoint and status (`tpserve_requests_total`)."""

    def on_response(path: str, status: int) -> None:
        endpoint = (
            path if path in ENDPOINTS else "/predictions" if path.startswith("/predictions/") else "other"
        )
        service.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()

    return on_response
