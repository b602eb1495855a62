"""Request/response bodies (pydantic). Limits that depend on the CLI: tpserve.frontend.guards."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: A seed is any 64-bit integer, signed or unsigned (what torch.Generator.manual_seed accepts).
SEED_MIN = -(2**63)
SEED_MAX = 2**64 - 1
#: Stop strings: how many and how long (each is matched against the text after every token).
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
#: top_k beyond any vocabulary means "off"; the bound keeps the value a 32-bit integer.
MAX_TOP_K = 2**31 - 1
#: Completion count: only 1 is served (a 400 says so); the bound keeps absurd values a 422.
MAX_N = 128

StopString = Annotated[str, Field(max_length=MAX_STOP_CHARS)]
StopList = Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)]


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class SamplingFields(_Req):
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=MAX_TOP_K, description="0 or -1: off")
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX, description="any 64-bit integer")
    stop: StopString | StopList | None = None
    ignore_eos: bool = Field(default=False, description="keep generating past EOS (fixed-length benchmarks)")

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return [s for s in stops if s]


# -- reference API -----------------------------------------------------------------------------
#: The reference web app's /generate defaults (its app.py): a request that names neither gets these.
REFERENCE_SYSTEM_PROMPT = "You are a helpful assistant."
REFERENCE_MAX_NEW_TOKENS = 256


class GenerateRequest(SamplingFields):
    prompt: str = Field(min_length=1)
    system_prompt: str | None = Field(
        default=REFERENCE_SYSTEM_PROMPT, description='"" or null: no system message'
    )
    max_new_tokens: int | None = Field(
        default=None, ge=1, description=f"default {REFERENCE_MAX_NEW_TOKENS} (at most the server's limit)"
    )


class PredictionParameters(_Req):
    """DJLServing-style parameters of POST /predictions/<model> (JSON body {"inputs", "parameters"})."""

    max_new_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=-1, le=MAX_TOP_K)
    seed: int | None = Field(default=None, ge=SEED_MIN, le=SEED_MAX)


class PredictionRequest(_Req):
    inputs: str = Field(min_length=1)
    parameters: PredictionParameters = Field(default_factory=PredictionParameters)


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class GenerateResponse(BaseModel):
    generated_text: str
    generation_time_sec: float
    finish_reason: str
    output_token_ids: list[int]
    usage: Usage


# -- OpenAI-compatible -------------------------------------------------------------------------
class StreamOptions(_Req):
    include_usage: bool = False


class _OpenAIFields(SamplingFields):
    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None


class CompletionRequest(_OpenAIFields):
    prompt: str | list[str] | list[int]  # OpenAI: a prompt may be given as token ids
    echo: bool = False


class ChatMessage(_Req):
    role: Literal["system", "user", "assistant", "developer", "tool"]
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ValueError(f"content part type {part.get('type')!r} is not supported (text only)")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class ChatCompletionRequest(_OpenAIFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody
