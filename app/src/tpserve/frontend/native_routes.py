"""tpserve's own routes: /health, /metrics and the reference /generate."""

from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError

from tpserve.core.service import Service
from tpserve.frontend.errors import APIError
from tpserve.frontend.generation import Pipeline, Prompt, usage
from tpserve.frontend.guards import Guards
from tpserve.frontend.schemas import (
    REFERENCE_MAX_NEW_TOKENS,
    GenerateRequest,
    GenerateResponse,
    PredictionRequest,
    SamplingFields,
)


def native_router(service: Service, guards: Guards) -> APIRouter:
    router = APIRouter()
    pipeline = Pipeline(service, guards)

    @router.get("/health")
    async def health() -> JSONResponse:
        body = service.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @router.get("/metrics")
    async def metrics() -> Response:
        text = await service.metrics_text()
        return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @router.post("/generate", dependencies=[Depends(guards.authorize)])
    async def generate(body: GenerateRequest, http: Request) -> GenerateResponse:
        messages = [{"role": "system", "content": body.system_prompt}] if body.system_prompt else []
        messages.append({"role": "user", "content": body.prompt})
        t0 = time.monotonic()
        req = pipeline.submit(
            Prompt(messages=messages), body, body.max_new_tokens, "max_new_tokens", 0.0, "/generate",
            default_max_new=REFERENCE_MAX_NEW_TOKENS,
        )  # fmt: skip
        text, final = await pipeline.complete(req, http)
        return GenerateResponse(
            generated_text=text,
            generation_time_sec=round(time.monotonic() - t0, 4),
            finish_reason=final.finish_reason or "stop",
            output_token_ids=[t for t in final.output_ids if t not in service.eos_ids],
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
                message = f"invalid predictions body: {exc.errors()[0]['msg']}"
                raise APIError(422, message, code="invalid_value") from None
        else:
            try:
                body = PredictionRequest(inputs=raw.decode("utf-8"))
            except (UnicodeDecodeError, ValidationError):
                raise APIError(
                    400, "the body must be a non-empty UTF-8 text prompt", param="inputs"
                ) from None
        p = body.parameters
        fields = SamplingFields(temperature=p.temperature, top_p=p.top_p, top_k=p.top_k, seed=p.seed)
        req = pipeline.submit(
            Prompt(text=body.inputs, param="inputs"), fields, p.max_new_tokens, "max_new_tokens", 0.0,
            "/predictions", default_max_new=REFERENCE_MAX_NEW_TOKENS,
        )  # fmt: skip
        text, _ = await pipeline.complete(req, http)
        return [{"generated_text": text}]

    return router
