"""What a request must pass before it reaches the scheduler: API key, admission, model, limits."""

from __future__ import annotations

import hmac

from fastapi import Request

from tpserve.core.service import Service
from tpserve.frontend.errors import APIError
from tpserve.frontend.schemas import ChatCompletionRequest, CompletionRequest

#: A prompt's UTF-8 size is checked before tokenization against max_prompt_tokens x this (no token
#: of a real vocabulary averages more), so a huge text is refused without tokenizing it.
PROMPT_BYTES_PER_TOKEN = 32


class Guards:
    """Checks bound to one service; each raises `APIError` with the status the client should see."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.cfg = service.config

    def authorize(self, request: Request) -> None:
        """A FastAPI dependency: `Authorization: Bearer <key>` when an API key is configured."""
        if self.cfg.api_key is None:
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
        if not hmac.compare_digest(token.strip().encode(), self.cfg.api_key.encode()):
            raise APIError(401, "invalid API key", "authentication_error", code="invalid_api_key")

    def admit(self) -> None:
        service = self.service
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
        if service.queue_depth() >= self.cfg.max_queue:
            raise APIError(
                429,
                f"queue is full ({self.cfg.max_queue} waiting); retry later",
                "rate_limit_error",
                code="queue_full",
                headers={"Retry-After": "1"},
            )

    def check_model(self, name: str) -> None:
        if name != self.cfg.served_model_name:
            raise APIError(
                404,
                f"model {name!r} does not exist; this server serves {self.cfg.served_model_name!r}",
                param="model",
                code="model_not_found",
            )

    def openai_checks(self, body: CompletionRequest | ChatCompletionRequest) -> None:
        self.check_model(body.model)
        if body.n != 1:
            raise APIError(400, f"n={body.n} is not supported; only n=1", param="n", code="unsupported_value")

    def check_text_size(self, *texts: str | None, param: str = "prompt") -> None:
        """Refuse, before tokenizing, a prompt text whose size no prompt within the token limit has."""
        size = sum(len(t.encode("utf-8", "surrogatepass")) for t in texts if t)
        limit = self.cfg.max_prompt_tokens * PROMPT_BYTES_PER_TOKEN
        if size > limit:
            raise APIError(
                400,
                f"prompt text is {size} bytes; the limit is {limit} bytes ({self.cfg.max_prompt_tokens} "
                f"tokens x {PROMPT_BYTES_PER_TOKEN}), checked before tokenization",
                param=param,
                code="prompt_too_long",
            )

    def check_token_ids(self, ids: list[int]) -> None:
        vocab = self.service.vocab_size
        if any(not 0 <= t < vocab for t in ids):
            raise APIError(
                400, f"prompt token ids must be in [0, {vocab})", param="prompt", code="invalid_value"
            )

    def check_prompt(self, ids: list[int], max_new: int) -> None:
        max_seq_len = self.service.max_seq_len
        if not ids:
            raise APIError(400, "prompt is empty after tokenization", param="prompt", code="empty_prompt")
        if len(ids) > self.cfg.max_prompt_tokens:
            raise APIError(
                400,
                f"prompt has {len(ids)} tokens; the limit is {self.cfg.max_prompt_tokens}",
                param="prompt",
                code="prompt_too_long",
            )
        if max_seq_len and len(ids) + max_new > max_seq_len:
            raise APIError(
                400,
                f"prompt ({len(ids)} tokens) + max tokens ({max_new}) exceeds the model's "
                f"context of {max_seq_len}",
                param="max_tokens",
                code="context_length_exceeded",
            )

    def max_new(self, value: int | None, param: str, default: int | None = None) -> int:
        """The request's token budget (`default`, else the server's, when it names none), within the limit."""
        if value is None:
            return min(default or self.cfg.default_max_new_tokens, self.cfg.max_new_tokens)
        if value > self.cfg.max_new_tokens:
            raise APIError(
                422,
                f"{param}={value} exceeds this server's limit of {self.cfg.max_new_tokens}",
                param=param,
                code="invalid_value",
            )
        return value
