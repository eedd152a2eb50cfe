"""The small interface every engine backend implements.

The app (``turnout.shim.app``) validates requests, enforces auth, limits
and metrics, and turns backend output into HTTP. A backend only turns an
OpenAI-shaped request body into an OpenAI-shaped response body:

* proxy backends (vLLM, SGLang, MLX) forward the body to the engine's own
  server on localhost and pass SSE bytes through unparsed;
* in-process backends (transformers, sentence-transformers) compute the
  answer themselves and yield chunk dicts; llama.cpp runs in-process too but
  sends every request to llama-server's own loopback listener and relays its
  SSE bytes, as the proxy backends do.

Bodies are plain dicts already validated by the app; ``model`` has been
checked against the served name and replaced by it, or is the name of a loaded
LoRA adapter (:mod:`turnout.shim.lora`) whose answer the backend must give. Unknown fields the client
sent are kept (engines have their own extensions, e.g. ``top_k``).

What the app does for every backend, so backends need not:

* sets ``model`` to the served name in every response body and dict chunk;
* for chat dict streams, adds ``"role": "assistant"`` to the first delta
  when it is missing;
* usage in streams: a dict stream MAY yield a final chunk with
  ``"choices": []`` and ``"usage"``; if it does not, the app builds one from
  ``Stream.usage`` when the client asked for
  ``stream_options.include_usage``, and drops usage chunks it did not ask for
  (proxy backends deal with their bytes themselves);
* appends ``data: [DONE]``; turns an exception raised while iterating into an
  error event followed by ``[DONE]``;
* on client disconnect calls ``chunks.aclose()`` (shielded from
  cancellation), so a backend stops generating in its generator's
  ``finally``; the disconnect may also arrive as a cancellation inside the
  generator, so a ``finally`` that awaits should shield itself
  (``with anyio.CancelScope(shield=True): ...``) or be synchronous;
* on client disconnect during a plain (non-streamed) call, cancels the
  task awaiting ``chat()``/``completions()``/...;
* an ``OpenAIError`` raised before the first chunk becomes an HTTP error
  with its status (``retry_after`` adds ``Retry-After``); anything else
  becomes a 500 in the envelope, without the exception text;
* rerank answers: sorts by ``relevance_score``, applies ``top_n`` and
  ``return_documents`` and writes ``document`` as ``{"text": ...}``; a
  backend may return ``{"results": [{"index", "relevance_score"}], "usage"}``.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from turnout.shimargs import ShimArgs
from turnout.wire.errors import OpenAIError
from turnout.wire.sse import Usage


class State(enum.Enum):
    """Backend life cycle; ``/health`` answers 200 only in READY."""

    LOADING = "loading"
    READY = "ready"
    DEAD = "dead"


@dataclass
class Health:
    """``final``: DEAD for good (the engine process exited, the generation loop died): the shim exits."""

    state: State
    message: str = ""
    final: bool = False


@dataclass
class Stream:
    """A streamed answer.

    ``chunks`` yields either ready SSE ``bytes`` (proxy backends; each item
    one or more complete ``data: ...\\n\\n`` events, without the final
    ``[DONE]``) or dicts (in-process backends) that the app serialises.
    ``usage`` is filled in by the backend when the stream ends, for metrics.
    """

    chunks: AsyncIterator[bytes | dict[str, Any]]
    usage: Usage = field(default_factory=Usage)


class Backend(ABC):
    """One engine serving one model."""

    #: which endpoints this backend answers: subset of {"chat", "completions", "embeddings", "rerank"}
    capabilities: frozenset[str] = frozenset()

    def __init__(self, args: ShimArgs) -> None:
        self.args = args

    @abstractmethod
    async def start(self) -> None:
        """Load the model or start the engine; return when ready to serve."""

    @abstractmethod
    async def stop(self) -> None:
        """Release the model or stop the engine process; idempotent."""

    @abstractmethod
    def health(self) -> Health:
        """Current state, cheap to call (no I/O)."""

    def model_card(self) -> dict[str, Any]:
        """Extra fields for this model's ``/v1/models`` entry (e.g. ``max_model_len``)."""
        return {}

    async def load_adapter(self, name: str, path: str) -> None:
        """Load the PEFT LoRA adapter in folder ``path`` as ``name`` (requests then name it as ``model``).

        Called by :class:`turnout.shim.lora.Adapters`, which has checked the folder, the rank and the
        number loaded. An engine that cannot add an adapter while it runs keeps this 501.
        """
        raise OpenAIError(f"the {self.args.engine} engine cannot load LoRA adapters while it runs",
                          status=501, code="lora_unsupported")

    async def unload_adapter(self, name: str) -> None:
        """Unload the adapter ``name``; no request is using it any more."""
        raise OpenAIError(f"the {self.args.engine} engine cannot unload LoRA adapters while it runs",
                          status=501, code="lora_unsupported")

    async def chat(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        raise OpenAIError("this model does not serve chat completions", status=404, code="unsupported")

    async def completions(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        raise OpenAIError("this model does not serve completions", status=404, code="unsupported")

    async def embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        raise OpenAIError("this model does not serve embeddings", status=404, code="unsupported")

    async def rerank(self, body: dict[str, Any]) -> dict[str, Any]:
        raise OpenAIError("this model does not serve rerank", status=404, code="unsupported")
