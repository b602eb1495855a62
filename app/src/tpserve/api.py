"""HTTP API (FastAPI) on rank 0: reference /generate, OpenAI-compatible /v1/*, /health, /metrics.

Every error is JSON `{"error": {"message", "type", "param", "code"}}` with a 4xx/5xx status;
bad input never produces a 500 and never hangs (every wait is bounded by the request timeout).
"""

from __future__ import annotations

import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tpserve.limits import BodyLimitMiddleware
from tpserve.sampling import SamplingParams
from tpserve.scheduler import Event
from tpserve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    GenerateRequest,
    GenerateResponse,
    SamplingFields,
    Usage,
)
from tpserve.service import Service

ENDPOINTS = ("/generate", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions")


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


def error_response(
    status: int,
    message: str,
    type_: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


def _validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    parts = []
    param = None
    for err in exc.errors():
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            loc = []
        if param is None and loc:
            param = loc[0]
        where = ".".join(loc) or "body"
        if err.get("type") == "json_invalid":
            parts.append(f"request body is not valid JSON ({err.get('msg')})")
        else:
            parts.append(f"{where}: {err.get('msg')}")
    return "; ".join(parts) or "invalid request", param


def build_app(service: Service) -> FastAPI:
    cfg = service.config
    app = FastAPI(title="tpserve", version="0.1.0", docs_url=None, redoc_url=None)
    app.add_middleware(
        BodyLimitMiddleware, max_body_bytes=cfg.max_body_bytes, on_response=_count(service), paths=ENDPOINTS
    )

    @app.exception_handler(APIError)
    async def _api_error(_: Request, exc: APIError) -> JSONResponse:
        return error_response(exc.status, exc.message, exc.type, exc.param, exc.code, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = _validation_message(exc)
        return error_response(422, message, param=param, code="invalid_value")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(exc.status_code, str(exc.detail), code="http_error")

    def authorize(request: Request) -> None:
        if cfg.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise APIError(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                "authentication_error",
                code="missing_api_key",
            )
        if not hmac.compare_digest(token.strip().encode(), cfg.api_key.encode()):
            raise APIError(401, "invalid API key", "authentication_error", code="invalid_api_key")

    def admit() -> None:
        if service.status == "loading":
            raise APIError(
                503,
                "model is loading; retry shortly",
                "service_unavailable",
                code="loading",
                headers={"Retry-After": "5"},
            )
        if not service.accepting:
            raise APIError(
                503,
                "server is draining (shutting down); not accepting requests",
                "service_unavailable",
                code="draining",
                headers={"Retry-After": "10"},
            )
        assert service.scheduler is not None
        if service.scheduler.queue_depth() >= cfg.max_queue:
            raise APIError(
                429,
                f"queue is full ({cfg.max_queue} waiting); retry later",
                "rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            )

    def check_model(name: str) -> None:
        if name != cfg.served_model_name:
            raise APIError(
                404,
                f"model {name!r} does not exist; this server serves {cfg.served_model_name!r}",
                param="model",
                code="model_not_found",
            )

    def check_prompt(ids: list[int], max_new: int) -> None:
        if not ids:
            raise APIError(400, "prompt is empty after tokenization", param="prompt", code="empty_prompt")
        if len(ids) > cfg.max_prompt_tokens:
            raise APIError(
                400,
                f"prompt has {len(ids)} tokens; the limit is {cfg.max_prompt_tokens}",
                param="prompt",
                code="prompt_too_long",
            )
        if service.max_seq_len and len(ids) + max_new > service.max_seq_len:
            raise APIError(
                400,
                f"prompt ({len(ids)} tokens) + max tokens ({max_new}) exceeds the model's "
                f"context of {service.max_seq_len}",
                param="max_tokens",
                code="context_length_exceeded",
            )

    def max_new(value: int | None, param: str) -> int:
        if value is None:
            return min(cfg.default_max_new_tokens, cfg.max_new_tokens)
        if value > cfg.max_new_tokens:
            raise APIError(
                422,
                f"{param}={value} exceeds this server's limit of {cfg.max_new_tokens}",
                param=param,
                code="invalid_value",
            )
        return value

    def params(body: SamplingFields, n_max: int, default_temperature: float) -> SamplingParams:
        top_k = body.top_k or 0
        return SamplingParams(
            max_new_tokens=n_max,
            temperature=default_temperature if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=max(top_k, 0),
            seed=body.seed,
            stop=tuple(body.stop_list()),
            ignore_eos=body.ignore_eos,
        )

    def openai_checks(body: CompletionRequest | ChatCompletionRequest) -> None:
        check_model(body.model)
        if body.n != 1:
            raise APIError(400, f"n={body.n} is not supported; only n=1", param="n", code="unsupported_value")

    async def collect(req_events: AsyncIterator[Event]) -> tuple[str, Event]:
        text: list[str] = []
        async for ev in req_events:
            text.append(ev.text)
            if ev.final:
                if ev.finish_reason == "timeout":
                    raise APIError(
                        504,
                        f"generation did not finish within {cfg.request_timeout_s:g} s",
                        "timeout_error",
                        code="request_timeout",
                    )
                if ev.finish_reason == "error":
                    raise APIError(
                        503,
                        ev.error or "generation failed",
                        "service_unavailable",
                        code="engine_capacity",
                        headers={"Retry-After": "1"},
                    )
                return "".join(text), ev
        raise APIError(500, "generation ended without a final event", "server_error")

    # -- routes ----------------------------------------------------------------------------
    @app.get("/health")
    async def health() -> JSONResponse:
        body = service.health()
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        service.metrics.queue_depth.set(service.scheduler.queue_depth() if service.scheduler else 0)
        return Response(service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [
                {
                    "id": cfg.served_model_name,
                    "object": "model",
                    "created": int(service.started),
                    "owned_by": "tpserve",
                }
            ],
        }

    @app.post("/generate", dependencies=[Depends(authorize)])
    async def generate(body: GenerateRequest) -> GenerateResponse:
        admit()
        n_max = max_new(body.max_new_tokens, "max_new_tokens")
        messages = [{"role": "system", "content": body.system_prompt}] if body.system_prompt else []
        messages.append({"role": "user", "content": body.prompt})
        ids = service.encode_chat(messages)
        check_prompt(ids, n_max)
        t0 = time.monotonic()
        req = service.new_request(ids, params(body, n_max, 0.0), "/generate")
        text, final = await collect(service.events(req))
        out_ids = [t for t in req.output_ids if t not in service.eos_ids]
        return GenerateResponse(
            generated_text=text,
            generation_time_sec=round(time.monotonic() - t0, 4),
            finish_reason=final.finish_reason or "stop",
            output_token_ids=out_ids,
            usage=_usage(final),
        )

    @app.post("/v1/completions", dependencies=[Depends(authorize)])
    async def completions(body: CompletionRequest) -> Any:
        openai_checks(body)
        token_ids = bool(body.prompt) and all(isinstance(t, int) for t in body.prompt)
        prompts = [body.prompt] if isinstance(body.prompt, str) or token_ids else body.prompt
        if len(prompts) != 1:
            raise APIError(
                400, "exactly one prompt per request is supported", param="prompt", code="unsupported_value"
            )
        if token_ids:  # token ids as the prompt (OpenAI allows it; exact lengths for benchmarks)
            vocab = len(service.tokenizer)
            if any(not 0 <= int(t) < vocab for t in prompts[0]):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
        admit()
        n_max = max_new(body.max_tokens, "max_tokens")
        ids = [int(t) for t in prompts[0]] if token_ids else service.encode_text(str(prompts[0]))
        check_prompt(ids, n_max)
        req = service.new_request(ids, params(body, n_max, 1.0), "/v1/completions")
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        prefix = (service.decode(ids) if token_ids else str(prompts[0])) if body.echo else ""

        def chunk(text: str, finish: str | None) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "text_completion",
                "created": created,
                "model": cfg.served_model_name,
                "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": None}],
            }

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(
                service.events(req),
                lambda ev: chunk(ev.text, ev.finish_reason),
                None,
                lambda usage: {**chunk("", None), "choices": [], "usage": usage},
                include_usage,
            )
        text, final = await collect(service.events(req))
        return {**chunk(prefix + text, final.finish_reason), "usage": _usage(final).model_dump()}

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat(body: ChatCompletionRequest) -> Any:
        openai_checks(body)
        try:
            messages = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages
            ]
        except ValueError as exc:
            raise APIError(400, str(exc), param="messages", code="unsupported_value") from None
        admit()
        n_max = max_new(
            body.max_completion_tokens or body.max_tokens,
            "max_completion_tokens" if body.max_completion_tokens else "max_tokens",
        )
        ids = service.encode_chat(messages)
        check_prompt(ids, n_max)
        req = service.new_request(ids, params(body, n_max, 1.0), "/v1/chat/completions")
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta: dict[str, Any], finish: str | None) -> dict[str, Any]:
            return {
                "id": rid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": cfg.served_model_name,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
            }

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return _sse(
                service.events(req),
                lambda ev: chunk({"content": ev.text} if ev.text else {}, ev.finish_reason),
                chunk({"role": "assistant", "content": ""}, None),
                lambda usage: {**chunk({}, None), "choices": [], "usage": usage},
                include_usage,
            )
        text, final = await collect(service.events(req))
        return {
            "id": rid,
            "object": "chat.completion",
            "created": created,
            "model": cfg.served_model_name,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": final.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": _usage(final).model_dump(),
        }

    return app


def _usage(ev: Event) -> Usage:
    return Usage(
        prompt_tokens=ev.prompt_tokens,
        completion_tokens=ev.completion_tokens,
        total_tokens=ev.prompt_tokens + ev.completion_tokens,
    )


def _sse(
    events: AsyncIterator[Event],
    to_chunk: Any,
    first: dict[str, Any] | None,
    usage_chunk: Any,
    include_usage: bool,
) -> StreamingResponse:
    """Server-sent events: `data: {json}\\n\\n` per chunk, then `data: [DONE]`."""

    text_chunk = _text_chunk_template(to_chunk)

    async def body() -> AsyncIterator[bytes]:
        if first is not None:
            yield _data(first)
        async for ev in events:
            if ev.final and ev.finish_reason in ("timeout", "error"):
                message = "generation timed out" if ev.finish_reason == "timeout" else ev.error
                error = {"message": message, "type": f"{ev.finish_reason}_error", "param": None}
                yield _data({"error": {**error, "code": ev.finish_reason}})
                break
            if ev.text and not ev.final and text_chunk is not None:
                yield text_chunk(ev.text)  # the per-token hot path: no dict, one small dumps
            elif ev.text or ev.final:
                yield _data(to_chunk(ev))
            if ev.final and include_usage:
                yield _data(usage_chunk(_usage(ev).model_dump()))
        yield b"data: [DONE]\n\n"

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _data(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False).encode() + b"\n\n"


_MARK = "\u0000tpserve-text\u0000"


def _text_chunk_template(to_chunk: Any) -> Callable[[str], bytes] | None:
    """`text -> _data(to_chunk(Event(text=text)))` for a plain text delta, byte for byte the same.

    The chunk is serialised once with a marker as its text; each token then only JSON-encodes its
    own text between the two halves. None when the marker does not appear exactly once.
    """
    full = json.dumps(to_chunk(Event(text=_MARK)), ensure_ascii=False)
    mark = json.dumps(_MARK, ensure_ascii=False)
    if full.count(mark) != 1:
        return None
    head, tail = full.split(mark)
    head_b, tail_b = b"data: " + head.encode(), tail.encode() + b"\n\n"
    dumps = json.dumps

    def text_chunk(text: str) -> bytes:
        return head_b + dumps(text, ensure_ascii=False).encode() + tail_b

    return text_chunk


def _count(service: Service) -> Any:
    def on_response(path: str, status: int) -> None:
        endpoint = path if path in ENDPOINTS else "other"
        service.metrics.requests.labels(endpoint=endpoint, status=str(status)).inc()

    return on_response
