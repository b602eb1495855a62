"""tpserve's own routes: /health, /metrics and the reference /generate."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from tpserve.api.errors import APIError
from tpserve.api.generation import collect, sampling_params, usage
from tpserve.api.guards import Guards
from tpserve.schemas import (
    REFERENCE_MAX_NEW_TOKENS,
    GenerateRequest,
    GenerateResponse,
    PredictionRequest,
    SamplingFields,
)
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
        n_max = guards.max_new(body.max_new_tokens, "max_new_tokens", REFERENCE_MAX_NEW_TOKENS)
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

    @router.post("/predictions/{model}", dependencies=[Depends(guards.authorize)])
    async def predictions(model: str, http: Request) -> list[dict[str, str]]:
        """DJLServing's text-generation call: the body is the prompt as plain text, or JSON
        {"inputs": "...", "parameters": {...}}; the answer is [{"generated_text": <continuation>}]."""
        guards.check_model(model)
        raw = await http.body()
        if http.headers.get("content-type", "").startswith("application/json"):
            try:
                body = PredictionRequest.model_validate_json(raw)
            except ValidationError as exc:
                raise APIError(
                    422, f"invalid predictions body: {exc.errors()[0]['msg']}", code="invalid_value"
                ) from None
        else:
            try:
                body = PredictionRequest(inputs=raw.decode("utf-8"))
            except (UnicodeDecodeError, ValidationError):
                raise APIError(
                    400, "the body must be a non-empty UTF-8 text prompt", param="inputs"
                ) from None
        guards.admit()
        p = body.parameters
        n_max = guards.max_new(p.max_new_tokens, "max_new_tokens", REFERENCE_MAX_NEW_TOKENS)
        guards.check_text_size(body.inputs, param="inputs")
        ids = service.encode_text(body.inputs)
        guards.check_prompt(ids, n_max)
        fields = SamplingFields(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, seed=p.seed)
        req = service.new_request(ids, sampling_params(fields, n_max, 0.0), "/predictions")
        text, _ = await collect(req, service.events(req), service.config.request_timeout_s, http)
        return [{"generated_text": text}]

    return router
