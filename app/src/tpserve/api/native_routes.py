"""tpserve's own routes: /health, /metrics and the reference /generate."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from tpserve.api.generation import collect, sampling_params, usage
from tpserve.api.guards import Guards
from tpserve.schemas import GenerateRequest, GenerateResponse
from tpserve.service import Service


def native_router(service: Service, guards: Guards) -> APIRouter:
    router = APIRouter()

    @router.get("/health")
    async def health() -> JSONResponse:
        body = service.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @router.get("/metrics")
    async def metrics() -> Response:
        service.metrics.queue_depth.set(service.scheduler.queue_depth() if service.scheduler else 0)
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @router.post("/generate", dependencies=[Depends(guards.authorize)])
    async def generate(body: GenerateRequest, http: Request) -> GenerateResponse:
        guards.admit()
        n_max = guards.max_new(body.max_new_tokens, "max_new_tokens")
        guards.check_text_size(body.prompt, body.system_prompt)
        messages = [{"role": "system", "content": body.system_prompt}] if body.system_prompt else []
        messages.append({"role": "user", "content": body.prompt})
        ids = service.encode_chat(messages)
        guards.check_prompt(ids, n_max)
        t0 = time.monotonic()
        req = service.new_request(ids, sampling_params(body, n_max, 0.0), "/generate")
        text, final = await collect(req, service.events(req), service.config.request_timeout_s, http)
        out_ids = [t for t in req.output_ids if t not in service.eos_ids]
        return GenerateResponse(
            generated_text=text,
            generation_time_sec=round(time.monotonic() - t0, 4),
            finish_reason=final.finish_reason or "stop",
            output_token_ids=out_ids,
            usage=usage(final),
        )

    return router
