"""Request models for the OpenAI-compatible endpoints.

They check the fields the shim and every engine rely on and keep the rest
(``extra="allow"``), so engine-specific parameters such as ``top_k`` or
``chat_template_kwargs`` reach the engine untouched.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

#: largest ``n`` accepted: more choices than this per request is a mistake or an attack
MAX_N = 128


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str | None = Field(default=None, description="served model name; defaults to the one served")

    def body(self) -> dict[str, Any]:
        """The request as a plain dict, with only the fields the client sent."""
        return self.model_dump(exclude_unset=True)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")

    include_usage: StrictBool | None = None


class _Sampling(_Request):
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=MAX_N)
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def _few_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop sequences")
        return v


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(_Sampling):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: StrictBool | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class CompletionRequest(_Sampling):
    """``POST /v1/completions``."""

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: StrictBool | None = None
    logprobs: int | None = Field(default=None, ge=0, le=20)
    suffix: str | None = None


class EmbeddingRequest(_Request):
    """``POST /v1/embeddings``."""

    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] | None = None
    dimensions: int | None = Field(default=None, ge=1)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _not_empty(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("input must not be empty")
        return v


class RerankDocument(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: str


class RerankRequest(_Request):
    """``POST /v1/rerank`` (the shape Xinference, Jina and Cohere clients send)."""

    query: str
    documents: list[str | RerankDocument] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1)
    return_documents: StrictBool | None = True

    def body(self) -> dict[str, Any]:
        body = super().body()
        # Engines take plain strings; Jina clients may send {"text": ...}.
        body["documents"] = [d if isinstance(d, str) else d.text for d in self.documents]
        return body
