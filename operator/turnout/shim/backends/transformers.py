"""The transformers backend: an LLM generated in-process with continuous batching.

``--engine transformers --model-type llm``. The model and tokenizer load from
an HF folder onto ``--device``; chat prompts come from the tokenizer's chat
template. Every request becomes one row per choice in the scheduler's running
batch (:mod:`._batching`); text streams out as tokens are generated.

Embedding and rerank models served with ``--engine transformers`` are
sentence-transformers models, served by :mod:`.sentence`.

Engine args (``--engine-args`` JSON), all optional:

``dtype``               ``auto`` (default: float32 on CPU, the checkpoint's dtype on accelerators),
                        ``float32``, ``float16`` or ``bfloat16``
``max_model_len``       context length (default: the model's ``max_position_embeddings``)
``max_num_seqs``        most sequences decoded in one step (default 32 on CPU, 256 on accelerators)
``max_prefill_tokens``  most padded prompt tokens prefilled in one step (default 8192)
``trust_remote_code``   allow custom model code from the model folder (default false)
``attn_implementation`` e.g. ``sdpa`` or ``eager``
``threads``             torch intra-op threads (default: the CPUs this process may use, i.e. its
                        CPU affinity capped by a cgroup CPU quota such as a pod's CPU limit, less
                        one left to the event loop when there are more than one)

A model whose config has a ``vision_config`` (LLaVA, Qwen2-VL... image-text-to-text) loads with
``AutoModelForImageTextToText`` and its ``AutoProcessor``: chat ``image_url`` parts (``data:`` URLs;
``http(s)`` ones with ``--fetch-image-urls``, see :mod:`._images`) go through the processor and
reach the model with the prompt's prefill. A text model answers them 400.

Requests may carry vLLM's ``min_tokens``: EOS cannot end a choice before that many tokens
(``generate``'s ``min_new_tokens``).

With ``--enable-lora``, PEFT LoRA adapters are loaded into the running model between decode steps
(:mod:`._peft`) and a request names one as its ``model``; rows of different adapters and of the base
model share each batch (docs/lora.md).

With ``--tensor-parallel-size`` above 1 on an accelerator, the layers are
spread over the visible devices (``device_map="auto"``): this fits a model
that one device cannot hold, it does not speed decoding up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from turnout.shim import structured
from turnout.shim.backends import _features as feat
from turnout.shim.backends import _images
from turnout.shim.backends import _openai as oai
from turnout.shim.backends._batching import GenerationRequest, Scheduler, Sequence
from turnout.shim.backends._peft import PeftAdapters
from turnout.shim.backends.base import Backend, Health, State, Stream
from turnout.shim.cpus import usable_cpus
from turnout.shimargs import ShimArgs
from turnout.wire.errors import OpenAIError
from turnout.wire.sse import Usage

log = logging.getLogger(__name__)

ENGINE_ARGS = frozenset({"dtype", "max_model_len", "max_num_seqs", "max_prefill_tokens",
                         "trust_remote_code", "attn_implementation", "threads"})
DTYPES = ("auto", "float32", "float16", "bfloat16")


def model_path(model: str) -> str:
    """``--model`` as something ``from_pretrained`` reads: a folder (``file://`` stripped) or a hub id."""
    return model[len("file://"):] if model.startswith("file://") else model


def check_engine_args(engine_args: dict[str, Any], allowed: frozenset[str], engine: str) -> None:
    unknown = sorted(set(engine_args) - allowed)
    if unknown:
        raise ValueError(f"unknown engine args for {engine}: {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(allowed))}")


def torch_threads(engine_args: dict[str, Any]) -> int:
    """Torch's intra-op thread count: the ``threads`` engine arg, else :func:`usable_cpus` less one.

    The event loop (HTTP, chat templates, tokenizing, streaming) needs a CPU of its own: an
    OpenMP parallel region runs at the pace of its slowest thread, so one intra-op thread that
    shares its CPU with the loop holds back every op of every decode step.
    """
    threads = engine_args.get("threads")
    if threads is None:
        cpus = usable_cpus()
        return cpus - 1 if cpus > 1 else 1
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"engine arg threads must be a positive integer, got {threads!r}")
    return threads


def resolve_device(device: str) -> Any:
    """The torch device for ``--device``, failing with a clear message when it is absent."""
    import torch

    if device == "cpu":
        return torch.device("cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda but torch sees no CUDA device (is this a CUDA build of torch?)")
        return torch.device("cuda")
    if device == "npu":
        try:
            import torch_npu  # noqa: F401  (registers the npu device with torch)
        except ImportError as exc:
            raise RuntimeError("--device npu needs torch_npu (the Ascend image installs it)") from exc
        return torch.device("npu")
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise RuntimeError("--device mps but torch sees no Metal device")
        return torch.device("mps")
    raise RuntimeError(f"unknown device {device!r}")


def _is_vision(path: str, trust: bool) -> bool:
    """Whether the model folder holds an image-text-to-text model (its config has a vision part)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path, trust_remote_code=trust)
    return getattr(config, "vision_config", None) is not None


class _Chunks:
    """The streamed SSE bytes of one request; closing it (or dropping it) cancels generation.

    Each item is the events of one or more scheduler steps, ready to write: a
    step's text chunks are encoded from per-choice templates (one JSON string
    encode per delta, :class:`~._openai.SseText`), and steps already queued
    when the consumer comes back are joined into the same item, so a consumer
    that fell behind catches up in one write.
    """

    def __init__(self, request: GenerationRequest, count: int, stream: Stream,
                 head: Callable[[], list[dict[str, Any]]], text: oai.SseText,
                 finish: Callable[[int, str], dict[str, Any]], usage: Callable[[], dict[str, Any]] | None) -> None:
        self._request = request
        self._left = count
        self._stream = stream
        self._head = head
        self._text = text
        self._finish = finish
        self._usage = usage
        self._started = False
        self._error: BaseException | None = None  # raised on the call after the text before it

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        request = self._request
        if self._error is not None:
            error, self._error = self._error, None
            self._left = 0
            raise error
        if not self._left:
            raise StopAsyncIteration
        queue = request.queue
        record = request.record
        try:
            events = await queue.get()
        except BaseException:
            request.cancel()
            raise
        out: list[bytes] = []
        text = self._text
        while True:
            if events[0][0] == "error":
                request.cancel()
                if not out:
                    self._left = 0
                    raise events[0][1]
                self._error = events[0][1]
                break
            if not self._started:
                # the role chunks go out with the first token, so time-to-first-token means that
                self._started = True
                out.extend(oai.sse(chunk) for chunk in self._head())
            for event in events:
                if event[0] == "error":
                    self._error = event[1]
                    request.cancel()
                    break
                if event[2]:
                    out.append(text.event(event[1], event[2]))
                if event[0] == "finish":
                    self._left -= 1
                    request.complete = not self._left
                    out.append(oai.sse(self._finish(event[1], event[3])))
            if not self._left or self._error is not None:
                break
            try:
                events = queue.get_nowait()
            except asyncio.QueueEmpty:
                break
        self._stream.usage.completion_tokens = record.generated_tokens
        if not self._left and self._error is None and self._usage is not None:
            out.append(oai.sse(self._usage()))
        return out[0] if len(out) == 1 else b"".join(out)

    async def aclose(self) -> None:
        self._request.cancel()
        self._left = 0

    def __del__(self) -> None:
        self._request.cancel()


class TransformersBackend(Backend):
    """Chat and completions from a causal LM, batched continuously across requests."""

    capabilities = frozenset({"chat", "completions"})

    def __init__(self, args: ShimArgs) -> None:
        super().__init__(args)
        check_engine_args(args.engine_args, ENGINE_ARGS, "transformers")
        dtype = args.engine_args.get("dtype", "auto")
        if dtype not in DTYPES:
            raise ValueError(f"engine arg dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.threads = torch_threads(args.engine_args)
        self._health = Health(State.LOADING, "loading the model")
        self.scheduler: Scheduler | None = None
        self.tokenizer: Any = None
        #: the processor of an image-text-to-text model (None for a text model)
        self.processor: Any = None
        self.model: Any = None
        self.max_model_len = 0
        self.grammars: structured.Grammars | None = None
        self.logprobs: feat.Logprobs | None = None
        self.adapters: PeftAdapters | None = None

    # ---- life cycle --------------------------------------------------------

    async def start(self) -> None:
        self._health = Health(State.LOADING, "loading the model")
        try:
            await asyncio.to_thread(self._load)
        except Exception as exc:
            self._health = Health(State.DEAD, f"loading the model failed: {exc}")
            raise
        self._health = Health(State.READY)

    def _load(self) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        args, extra = self.args, self.args.engine_args
        torch.set_num_threads(self.threads)
        device = resolve_device(args.device)
        path = model_path(args.model)
        trust = bool(extra.get("trust_remote_code", False))
        dtype_name = extra.get("dtype", "auto")
        if dtype_name == "auto":
            dtype: Any = torch.float32 if device.type == "cpu" else "auto"
        else:
            dtype = getattr(torch, dtype_name)
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": trust}
        if extra.get("attn_implementation"):
            kwargs["attn_implementation"] = extra["attn_implementation"]
        auto: Any = AutoModelForCausalLM
        if _is_vision(path, trust):
            from transformers import AutoModelForImageTextToText, AutoProcessor

            auto = AutoModelForImageTextToText
            self.processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust)
            self.tokenizer = self.processor.tokenizer
        else:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        if args.tensor_parallel_size > 1 and device.type != "cpu":
            # layers spread over the visible devices (pipeline style); inputs go to the first one
            model = auto.from_pretrained(path, device_map="auto", **kwargs)
            device = model.get_input_embeddings().weight.device
        else:
            model = auto.from_pretrained(path, **kwargs).to(device)
        self.model = model.eval()
        config = model.config.get_text_config(decoder=True) if hasattr(model.config, "get_text_config") \
            else model.config
        self.max_model_len = int(extra.get("max_model_len") or getattr(config, "max_position_embeddings", 0)
                                 or 2048)
        eos: set[int] = set()
        for source in (getattr(model, "generation_config", None), self.tokenizer):
            ids = getattr(source, "eos_token_id", None)
            if isinstance(ids, int):
                eos.add(ids)
            elif isinstance(ids, (list, tuple)):
                eos.update(int(i) for i in ids)
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = next(iter(eos), 0)
        on_cpu = device.type == "cpu"
        scheduler = Scheduler(
            self.model, self.tokenizer, device=device, eos_ids=eos, pad_id=int(pad),
            max_num_seqs=int(extra.get("max_num_seqs") or (32 if on_cpu else 256)),
            max_prefill_tokens=int(extra.get("max_prefill_tokens") or 8192),
            max_queue=args.max_queue, threads=self.threads,
        )
        try:
            scheduler.warm_up()
        except Exception:
            scheduler.stop()
            raise
        if args.enable_lora:
            self.adapters = PeftAdapters(self.model)
            scheduler.before_forward = lambda seqs: self.adapters.set_rows([s.adapter for s in seqs])  # type: ignore[union-attr]
        self.scheduler = scheduler
        vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None \
            else len(self.tokenizer)
        self.grammars = structured.Grammars(self.tokenizer, int(vocab))
        self.logprobs = feat.Logprobs(self.tokenizer)
        log.info("loaded %s on %s (context %d tokens, %d torch threads)", path, device, self.max_model_len,
                 self.threads)

    async def stop(self) -> None:
        scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None:
            await asyncio.to_thread(scheduler.stop)
        self.model = None
        if self._health.state is State.READY:
            self._health = Health(State.LOADING, "stopped")
        with contextlib.suppress(Exception):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def health(self) -> Health:
        if self._health.state is State.READY and self.scheduler is not None and not self.scheduler.alive:
            return Health(State.DEAD, f"the generation loop died: {self.scheduler.error or 'unknown error'}",
                          final=True)
        return self._health

    def model_card(self) -> dict[str, Any]:
        return {"max_model_len": self.max_model_len} if self.max_model_len else {}

    # ---- LoRA adapters -----------------------------------------------------

    async def load_adapter(self, name: str, path: str) -> None:
        """Load a PEFT adapter into the running model between two decode steps."""
        scheduler, adapters = self._ready(), self.adapters
        if adapters is None:
            raise OpenAIError("LoRA adapters are not enabled (--enable-lora)", code="lora_not_enabled")
        try:
            await asyncio.wrap_future(scheduler.call(lambda: adapters.load(name, path)))
        except ValueError as exc:
            raise OpenAIError(str(exc), param="lora_path", code="invalid_adapter") from None

    async def unload_adapter(self, name: str) -> None:
        scheduler, adapters = self._ready(), self.adapters
        if adapters is not None:
            await asyncio.wrap_future(scheduler.call(lambda: adapters.unload(name)))

    # ---- requests ----------------------------------------------------------

    def _ready(self) -> Scheduler:
        if self.scheduler is None or self._health.state is not State.READY:
            raise OpenAIError("the model is not loaded yet", status=503, type="server_error",
                              code="model_loading")
        return self.scheduler

    def _chat_prompt(self, body: dict[str, Any], features: feat.Features) -> list[int]:
        messages = oai.chat_messages(body)
        if not getattr(self.tokenizer, "chat_template", None):
            raise OpenAIError("this model has no chat template; use /v1/completions", code="no_chat_template")
        kwargs = dict(body.get("chat_template_kwargs") or {})
        if features.tools is not None and features.tools.tools:
            kwargs["tools"] = features.tools.tools  # with tool_choice none too, as vLLM and llama.cpp do
        add_generation_prompt = body.get("add_generation_prompt", True)
        try:
            text = self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=add_generation_prompt,
                continue_final_message=bool(body.get("continue_final_message", False)), **kwargs)
        except Exception as exc:  # jinja errors: roles out of order, unsupported content...
            raise OpenAIError(f"the chat template rejected these messages: {exc}", param="messages") from exc
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    async def _vision_prompt(self, body: dict[str, Any]) -> tuple[list[int], dict[str, Any]]:
        """The prompt ids of a chat with images, and the processor's image inputs for the prefill."""
        messages, images = await _images.read_images(body, fetch=self.args.fetch_image_urls)
        processor = self.processor
        try:
            text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                 **dict(body.get("chat_template_kwargs") or {}))
            inputs = await asyncio.to_thread(processor, text=text, images=images, return_tensors="pt")
        except Exception as exc:  # the template or processor refused: image count, roles...
            raise OpenAIError(f"the model's processor rejected these messages: {exc}", param="messages") from exc
        media = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
        return inputs["input_ids"][0].tolist(), media

    def _submit(self, rid: str, prompts: list[list[int]], n: int, body: dict[str, Any],
                prompt_param: str, features: feat.Features, media: dict[str, Any] | None = None) -> GenerationRequest:
        scheduler = self._ready()
        longest = max(len(p) for p in prompts)
        if any(not p for p in prompts):
            raise OpenAIError("the prompt is empty", param=prompt_param)
        params = oai.sampling_params(body, prompt_tokens=longest, max_model_len=self.max_model_len,
                                     prompt_param=prompt_param)
        min_tokens = body.get("min_tokens")
        if min_tokens is not None and (isinstance(min_tokens, bool) or not isinstance(min_tokens, int)
                                       or not 0 <= min_tokens <= params.max_tokens):
            raise OpenAIError(f"'min_tokens' must be an integer between 0 and max_tokens ({params.max_tokens}), "
                              f"got {min_tokens!r}", param="min_tokens")
        request = GenerationRequest(rid, sum(len(p) for p in prompts))
        model = body.get("model")
        adapter = model if model != self.args.served_model_name else None
        request.sequences = [
            Sequence(request, i * n + j, prompt, params, self.tokenizer, scheduler.device,
                     min_tokens=min_tokens or 0, adapter=adapter, media=media)
            for i, prompt in enumerate(prompts) for j in range(n)
        ]
        assert self.grammars is not None
        for seq in request.sequences:
            features.prepare(seq, self.grammars)
        scheduler.submit(request)
        return request

    async def chat(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        self._ready()
        n = oai.choices_n(body)
        features = feat.chat_features(body, getattr(self.tokenizer, "chat_template", None),
                                      self.args.tool_call_parser)
        media = None
        if self.processor is not None and _images.has_images(body):
            prompt, media = await self._vision_prompt(body)
        else:
            prompt = self._chat_prompt(body, features)
        rid, created = oai.new_id("chatcmpl"), oai.now()
        request = self._submit(rid, [prompt], n, body, "messages", features, media)
        model = self.args.served_model_name
        assert self.logprobs is not None
        if not body.get("stream"):
            texts, reasons = await self._collect(request, n)
            answer = oai.chat_response(rid, created, model, texts, reasons, request.record.prompt_tokens,
                                       request.record.generated_tokens)
            for choice, text, seq in zip(answer["choices"], texts, request.sequences, strict=True):
                choice["message"], called = feat.chat_message(features, text)
                if called:
                    choice["finish_reason"] = "tool_calls"
                if features.top_logprobs is not None:
                    choice["logprobs"] = self.logprobs.chat(seq.logprobs)
            return answer
        if not features.plain:
            def chunk(index: int, delta: Any, logprobs: Any, reason: str | None) -> dict[str, Any]:
                out = oai.chat_chunk(rid, created, model, index, delta, reason)
                out["choices"][0]["logprobs"] = logprobs
                return out

            return feat.stream(request, n, features, self.logprobs, chat=True, chunk=chunk)

        def head() -> list[dict[str, Any]]:
            return [oai.chat_chunk(rid, created, model, i, {"role": "assistant", "content": ""})
                    for i in range(n)]

        def delta(index: int, text: str) -> dict[str, Any]:
            return oai.chat_chunk(rid, created, model, index, {"content": text})

        def finish(index: int, reason: str) -> dict[str, Any]:
            return oai.chat_chunk(rid, created, model, index, {}, reason)

        return self._stream(request, n, body, head, delta, finish, "chat.completion.chunk")

    async def completions(self, body: dict[str, Any]) -> dict[str, Any] | Stream:
        self._ready()
        n = oai.choices_n(body)
        features = feat.completion_features(body)
        prompts: list[list[int]] = []
        texts_in: list[str] = []
        for prompt in oai.completion_prompts(body):
            if isinstance(prompt, str):
                prompts.append(list(self.tokenizer(prompt).input_ids))
                texts_in.append(prompt)
            else:
                vocab = len(self.tokenizer)
                if any(t < 0 or t >= vocab for t in prompt):
                    raise OpenAIError(f"token ids must be in [0, {vocab})", param="prompt")
                prompts.append(prompt)
                texts_in.append(self.tokenizer.decode(prompt))
        echo = bool(body.get("echo"))
        rid, created = oai.new_id("cmpl"), oai.now()
        request = self._submit(rid, prompts, n, body, "prompt", features)
        model = self.args.served_model_name
        count = len(prompts) * n
        assert self.logprobs is not None

        def prefix(index: int) -> str:
            return texts_in[index // n] if echo else ""

        if not body.get("stream"):
            texts, reasons = await self._collect(request, count)
            answer = oai.completion_response(rid, created, model, [prefix(i) + t for i, t in enumerate(texts)],
                                             reasons, request.record.prompt_tokens, request.record.generated_tokens)
            if features.top_logprobs is not None:
                for i, (choice, seq) in enumerate(zip(answer["choices"], request.sequences, strict=True)):
                    choice["logprobs"] = self.logprobs.completion(seq.logprobs, len(prefix(i)))
            return answer
        if not features.plain:
            def chunk(index: int, text: Any, logprobs: Any, reason: str | None) -> dict[str, Any]:
                out = oai.completion_chunk(rid, created, model, index, text, reason)
                out["choices"][0]["logprobs"] = logprobs
                return out

            return feat.stream(request, count, features, self.logprobs, chat=False, chunk=chunk,
                               prefixes=[prefix(i) for i in range(count)])

        def head() -> list[dict[str, Any]]:
            return [oai.completion_chunk(rid, created, model, i, prefix(i)) for i in range(count) if echo]

        def delta(index: int, text: str) -> dict[str, Any]:
            return oai.completion_chunk(rid, created, model, index, text)

        def finish(index: int, reason: str) -> dict[str, Any]:
            return oai.completion_chunk(rid, created, model, index, "", reason)

        return self._stream(request, count, body, head, delta, finish, "text_completion")

    async def _collect(self, request: GenerationRequest, count: int) -> tuple[list[str], list[str]]:
        texts = [""] * count
        reasons: list[str | None] = [None] * count
        try:
            while any(r is None for r in reasons):
                for event in await request.queue.get():
                    if event[0] == "error":
                        raise event[1]
                    texts[event[1]] += event[2]
                    if event[0] == "finish":
                        reasons[event[1]] = event[3]
            request.complete = True
        except BaseException:
            request.cancel()
            raise
        return texts, [r or "stop" for r in reasons]

    def _stream(self, request: GenerationRequest, count: int, body: dict[str, Any],
                head: Callable[[], list[dict[str, Any]]], delta: Callable[[int, str], dict[str, Any]],
                finish: Callable[[int, str], dict[str, Any]], obj: str) -> Stream:
        record = request.record
        stream = Stream(chunks=None, usage=Usage(prompt_tokens=record.prompt_tokens))  # type: ignore[arg-type]
        model = self.args.served_model_name

        def usage() -> dict[str, Any]:
            return oai.usage_chunk(request.id, oai.now(), model, obj, record.prompt_tokens, record.generated_tokens)

        stream.chunks = _Chunks(request, count, stream, head, oai.SseText(delta), finish,
                                usage if oai.include_usage(body) else None)
        return stream
