"""Continuous batching for the transformers backend.

One scheduler thread owns the model and runs a single decode loop over every
in-flight sequence. Each step it:

1. drops sequences that finished or whose request was cancelled (the client
   went away), shrinking the KV cache rows with ``batch_select_indices``;
2. admits waiting requests (all ``n`` choices of a request together, up to
   ``max_num_seqs`` rows and ``max_prefill_tokens`` padded prompt tokens), runs
   one left-padded prefill for them and merges their KV cache into the running
   batch by left-padding the shorter side;
3. runs one decode forward pass over all rows, samples one token per row
   (greedy, temperature, top-k, top-p, penalties, per-sequence seeded
   generators) and posts text deltas to each request's asyncio queue.

The per-step cost matters as much as the batching: with a small model one
decode step is a millisecond or two, so the step does little besides the
forward pass. The KV cache grows in place; each step feeds only the new
token, with no attention mask at all while no row is padded, and a ready
``[B, 1, 1, T]`` boolean mask (not a 2D one for the model to expand) when
rows are padded and the model attends with SDPA; logits come from calling the
base model and the output head directly, skipping the causal-LM wrapper.
Warm-up switches each shortcut on only where it gives exactly the plain
forward's logits. Text is detokenized incrementally (only the new token), and
each step's events reach each event loop in one ``call_soon_threadsafe``.
The scheduler thread sets torch's intra-op thread count itself.

Models whose cache is not a plain per-layer dynamic KV cache (sliding-window
or linear-attention layers) cannot have rows merged; for them new requests
join only when the batch has drained (dynamic batching).

Each request's :class:`Progress` holds what its answer needs from the
scheduler thread: prompt and generated token counts, and whether it is done.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from turnout.shim.backends._openai import SamplingParams
from turnout.shim.backends._text import IncrementalDetokenizer, StopMatcher
from turnout.wire.errors import OpenAIError

log = logging.getLogger(__name__)

@dataclass
class Progress:
    """Token counts of one request, written by the scheduler thread, read for its usage."""

    prompt_tokens: int
    generated_tokens: int = 0
    cancelled: bool = False
    done: bool = False


@dataclass
class SchedulerStats:
    """Steps run, logged when the scheduler stops."""

    prefill_steps: int = 0
    decode_steps: int = 0
    #: decode steps by number of rows in the batch
    rows_per_step: Counter = field(default_factory=Counter)


class Sequence:
    """One choice of one request: a row of the batch while it runs."""

    def __init__(self, request: GenerationRequest, index: int, prompt_ids: list[int],
                 params: SamplingParams, tokenizer: Any, device: torch.device, *, min_tokens: int = 0,
                 adapter: str | None = None, media: dict[str, torch.Tensor] | None = None) -> None:
        self.request = request
        #: the LoRA adapter this row is generated with (None: the base model)
        self.adapter = adapter
        self.index = index
        self.prompt_ids = prompt_ids
        #: the prompt's images as the model's processor made them (``pixel_values``...), for the prefill
        self.media = media
        self.params = params
        #: EOS is masked out until this many tokens are out (vLLM's ``min_tokens``)
        self.min_tokens = min_tokens
        self.detok = IncrementalDetokenizer(tokenizer)
        self.stops = StopMatcher(params.stop)
        self.generator: torch.Generator | None = None
        if params.seed is not None and not params.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed((params.seed + index) % (2**63))
        self.n_out = 0
        self.finish: str | None = None
        #: a grammar the tokens must follow (``turnout.shim.structured.Constraint``), set by the backend
        self.constraint: Any = None
        #: how many alternatives each logprobs entry lists; None: no logprobs asked for
        self.top_logprobs: int | None = None
        #: ``(token, logprob, [(token, logprob), ...])`` per generated token, appended before its event
        self.logprobs: list[tuple[int, float, list[tuple[int, float]]]] = []
        self.last_logprob: tuple[int, float, list[tuple[int, float]]] | None = None


def _media(seqs: list[Sequence]) -> dict[str, torch.Tensor] | None:
    """The rows' image inputs joined in row order (the model fills image tokens in that order), or None."""
    rows = [s.media for s in seqs if s.media]
    if not rows:
        return None
    return {key: torch.cat([r[key] for r in rows]) for key in rows[0]}


class GenerationRequest:
    """The event-loop side of one request: a queue of per-step event lists.

    Events are ``("delta", index, text)``, ``("finish", index, text, reason)``
    and ``("error", OpenAIError)``.
    """

    def __init__(self, rid: str, prompt_tokens: int) -> None:
        self.id = rid
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[list[tuple[Any, ...]]] = asyncio.Queue()
        self.sequences: list[Sequence] = []
        self.record = Progress(prompt_tokens=prompt_tokens)
        self.cancelled = False
        #: set by the consumer once it has read every choice's finish event
        self.complete = False

    def cancel(self) -> None:
        """Stop generating for this request at the scheduler's next step; idempotent."""
        if not self.complete and not self.record.done and not self.cancelled:
            self.cancelled = True
            self.record.cancelled = True

    def post(self, events: list[tuple[Any, ...]]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
            self.loop.call_soon_threadsafe(self.queue.put_nowait, events)


def _deliver(items: list[tuple[GenerationRequest, list[tuple[Any, ...]]]]) -> None:
    for request, bucket in items:
        request.queue.put_nowait(bucket)


class Scheduler:
    """Owns the model on one thread; batches every in-flight sequence into each step."""

    def __init__(self, model: Any, tokenizer: Any, *, device: torch.device, eos_ids: set[int],
                 pad_id: int, max_num_seqs: int, max_prefill_tokens: int, max_queue: int,
                 threads: int | None = None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.device = device
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.max_num_seqs = max_num_seqs
        self.max_prefill_tokens = max_prefill_tokens
        self.max_queue = max_queue
        self.threads = threads
        self.torch_threads = 0
        self.stats = SchedulerStats()
        self.error: str | None = None
        self._cv = threading.Condition()
        self._pending: deque[GenerationRequest] = deque()
        #: work to run on the scheduler thread between steps (loading an adapter changes the model)
        self._calls: deque[tuple[Callable[[], Any], concurrent.futures.Future[Any]]] = deque()
        #: called with each forward pass's rows before it runs (LoRA: which adapter each row uses)
        self.before_forward: Callable[[list[Sequence]], None] | None = None
        self._stopping = False
        self._idle = threading.Event()
        self._idle.set()
        # the running batch
        self._rows: list[Sequence] = []
        self._cache: Any = None
        self._mask: torch.Tensor | None = None   # [B, T] 1 where the cache holds a real token
        self._padded = False                     # whether _mask has any 0 (else the model needs no mask)
        self._pos: torch.Tensor | None = None    # [B] position of each row's next token
        self._next: torch.Tensor | None = None   # [B] next input token of each row
        self._can_join: bool | None = None       # learnt from the first prefill's cache
        params = inspect.signature(model.forward).parameters
        #: the forward pass's name for the KV cache (``cache`` since transformers 5.x)
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._positions = "position_ids" in params  # ALiBi models (Bloom) take positions from the mask
        self._keep = "logits_to_keep" in params
        #: (base model, output head) when calling them directly gives the same logits as the whole
        #: model (checked in warm_up): skips the causal-LM wrapper's per-step Python work
        self._direct: tuple[Any, Any, str] | None = None
        #: whether a padded decode step may pass a ready 4D boolean mask (SDPA; checked in warm_up)
        self._mask4d = False
        self._eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=device) if eos_ids else None
        self._thread = threading.Thread(target=self._run, name="transformers-scheduler", daemon=True)
        self._thread.start()

    # ---- event-loop side -------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.error is None

    def submit(self, request: GenerationRequest) -> None:
        with self._cv:
            if self._stopping:
                raise OpenAIError("the model is shutting down", status=503, type="server_error",
                                  code="shutting_down")
            if len(self._pending) >= self.max_queue:
                raise OpenAIError(f"{len(self._pending)} requests are already waiting; retry later",
                                  status=429, type="rate_limit_error", code="queue_full", retry_after=1)
            self._pending.append(request)
            self._idle.clear()
            self._cv.notify()

    def call(self, fn: Callable[[], Any]) -> concurrent.futures.Future[Any]:
        """Run ``fn`` on the scheduler thread between two steps; its result or exception in the future."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._cv:
            if self._stopping:
                raise OpenAIError("the model is shutting down", status=503, type="server_error",
                                  code="shutting_down")
            self._calls.append((fn, future))
            self._cv.notify()
        return future

    def pending_count(self) -> int:
        with self._cv:
            return len(self._pending)

    def running_requests(self) -> int:
        return len({id(s.request) for s in self._rows})

    async def wait_idle(self) -> None:
        """Return once nothing is running or waiting."""
        while not self._idle.is_set():
            await asyncio.to_thread(self._idle.wait, 0.05)

    def warm_up(self) -> None:
        """A short prefill and decode steps before any request, so kernel set-up and lazy
        initialisation are not paid by the first client; then the shortcuts ``_direct`` and
        ``_mask4d`` are switched on only where they give exactly the logits of the plain call.
        Call before submitting anything."""
        from transformers.cache_utils import DynamicLayer

        with torch.inference_mode():
            plain, cache = self._trial()
            if self._eos is not None:  # EOS ids past the output head's size cannot be sampled anyway
                self._eos = self._eos[self._eos < plain[0].shape[-1]]
            self._direct = self._direct_parts()
            if self._direct is not None and not self._same(plain):
                log.info("this model's logits need its own forward; calling it whole")
                self._direct = None
            # one mask for every layer: not with sliding-window or linear-attention layers
            full = bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
            if full and self._positions and getattr(self.model.config, "_attn_implementation", None) == "sdpa":
                self._mask4d = True
                self._mask4d = self._same(plain)

    def _trial(self) -> tuple[list[torch.Tensor], Any]:
        """Logits of a padded two-row prefill and two decode steps, as the scheduler runs them."""
        from transformers import DynamicCache

        vocab = self.model.get_input_embeddings().weight.shape[0]
        ids = (torch.arange(12, device=self.device).reshape(2, 6) * 7 + 3) % vocab
        mask = torch.ones_like(ids)
        mask[0, :2] = 0
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits, cache = self._forward(ids, mask, positions, cache, last_only=True)
        out = [logits[:, -1]]
        pos = mask.sum(-1)
        for _ in range(2):
            mask = torch.cat([mask, mask.new_ones((2, 1))], dim=1)
            logits, cache = self._forward(out[-1].argmax(-1)[:, None], self._decode_mask(mask, True), pos[:, None],
                                          cache, last_only=False)
            out.append(logits[:, -1])
            pos = pos + 1
        return out, cache

    def _same(self, plain: list[torch.Tensor]) -> bool:
        """Whether the trial, run with the shortcuts now switched on, gives exactly ``plain``."""
        try:
            trial, _ = self._trial()
        except Exception as exc:  # a model whose layers do not take the shortcut
            log.debug("shortcut failed its trial: %s", exc)
            return False
        return all(torch.equal(x, y) for x, y in zip(plain, trial, strict=True))

    def _direct_parts(self) -> tuple[Any, Any, str] | None:
        base = getattr(self.model, "model", None)
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        if not isinstance(base, torch.nn.Module) or not isinstance(head, torch.nn.Module):
            return None
        if len(set((getattr(self.model, "hf_device_map", None) or {}).values())) > 1:
            return None  # layers spread over devices: leave the hooks' order alone
        params = inspect.signature(base.forward).parameters
        if "input_ids" not in params or ("position_ids" not in params and self._positions):
            return None
        kw = "cache" if "cache" in params else "past_key_values" if "past_key_values" in params else None
        return (base, head, kw) if kw else None

    def _decode_mask(self, mask: torch.Tensor, padded: bool) -> torch.Tensor | None:
        """What a decode step passes as ``attention_mask``: nothing without padding (all ones), a
        ready ``[B, 1, 1, T]`` boolean mask where SDPA takes one, else the 2D mask."""
        if not self._positions:
            return mask  # ALiBi models take positions from the mask
        if not padded:
            return None
        return mask.bool()[:, None, None, :] if self._mask4d else mask

    def stop(self) -> None:
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join()
        st = self.stats
        log.info("scheduler stopped after %d prefill and %d decode steps; rows per decode step: %s",
                 st.prefill_steps, st.decode_steps, dict(sorted(st.rows_per_step.items())))
        error = OpenAIError("the model is shutting down", status=503, type="server_error",
                            code="shutting_down")
        for request in {id(s.request): s.request for s in self._rows}.values():
            self._finish_request(request, error)
        while self._pending:
            self._finish_request(self._pending.popleft(), error)
        self._reset_batch()

    # ---- scheduler thread --------------------------------------------------

    def _run(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)  # the intra-op pool of this thread, which runs every op
        #: the intra-op threads the decode loop runs with (what torch reports on this thread)
        self.torch_threads = torch.get_num_threads()
        with torch.inference_mode():
            while True:
                with self._cv:
                    while not self._stopping and not self._rows and not self._pending and not self._calls:
                        self._idle.set()
                        self._cv.wait()
                    if self._stopping:
                        for _, future in self._calls:
                            future.cancel()
                        return
                    calls = list(self._calls)
                    self._calls.clear()
                    newcomers = self._admit()
                for fn, future in calls:
                    if future.set_running_or_notify_cancel():
                        try:
                            future.set_result(fn())
                        except Exception as exc:
                            future.set_exception(exc)
                try:
                    self._drop_done()
                    if newcomers:
                        self._prefill(newcomers)
                        self._drop_done()
                    if self._rows:
                        self._decode()
                        self._drop_done()
                except Exception as exc:
                    log.exception("generation step failed")
                    self._fail_batch(exc, newcomers)

    def _admit(self) -> list[Sequence]:
        if self._rows and self._can_join is False:
            return []
        admitted: list[Sequence] = []
        longest = 0
        while self._pending:
            request = self._pending[0]
            if request.cancelled:
                self._pending.popleft()
                self._finish_request(request, None)
                continue
            seqs = request.sequences
            rows = len(self._rows) + len(admitted) + len(seqs)
            longest_after = max(longest, *(len(s.prompt_ids) for s in seqs))
            tokens = longest_after * (len(admitted) + len(seqs))
            if admitted and (rows > self.max_num_seqs or tokens > self.max_prefill_tokens):
                break
            if not admitted and self._rows and rows > self.max_num_seqs:
                break
            self._pending.popleft()
            admitted.extend(seqs)
            longest = longest_after
        return admitted

    def _prefill(self, seqs: list[Sequence]) -> None:
        longest = max(len(s.prompt_ids) for s in seqs)
        ids = torch.full((len(seqs), longest), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, longest - len(s.prompt_ids):] = torch.tensor(s.prompt_ids, dtype=torch.long)
            mask[i, longest - len(s.prompt_ids):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        cache = DynamicCache(config=self.model.config)
        padded = any(len(s.prompt_ids) != longest for s in seqs)
        if self.before_forward is not None:
            self.before_forward(seqs)
        logits, cache = self._forward(ids, mask if padded or not self._positions else None, positions, cache,
                                      last_only=True, media=_media(seqs))
        for s in seqs:
            s.media = None  # the images are in the cache now
        if self._can_join is None:
            self._can_join = bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
            if not self._can_join:
                log.info("this model's cache cannot merge rows; new requests join when the batch drains")
        tokens = self._sample(logits[:, -1, :], seqs)
        self.stats.prefill_steps += 1
        self._merge(cache, mask, seqs, mask.sum(-1), tokens, padded=padded)
        self._emit(seqs, tokens.tolist())

    def _merge(self, cache: Any, mask: torch.Tensor, seqs: list[Sequence], pos: torch.Tensor,
               tokens: torch.Tensor, padded: bool) -> None:
        if not self._rows:
            self._cache, self._mask, self._pos, self._next = cache, mask, pos, tokens
            self._padded = padded
            self._rows = list(seqs)
            return
        assert self._mask is not None and self._pos is not None and self._next is not None
        width = max(self._mask.shape[1], mask.shape[1])

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([pad(old.keys, 2), pad(new.keys, 2)], dim=0)
            old.values = torch.cat([pad(old.values, 2), pad(new.values, 2)], dim=0)
        self._padded = self._padded or padded or self._mask.shape[1] != mask.shape[1]
        self._mask = torch.cat([pad(self._mask, 1), pad(mask, 1)], dim=0)
        self._pos = torch.cat([self._pos, pos])
        self._next = torch.cat([self._next, tokens])
        self._rows.extend(seqs)

    def _decode(self) -> None:
        assert self._mask is not None and self._pos is not None and self._next is not None
        rows = self._rows
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(rows), 1))], dim=1)
        if self.before_forward is not None:
            self.before_forward(rows)
        # without padding the mask is all ones: leaving it out spares the model building a 4D mask
        logits, _ = self._forward(self._next[:, None], self._decode_mask(self._mask, self._padded),
                                  self._pos[:, None], self._cache, last_only=False)
        self._pos = self._pos + 1
        tokens = self._sample(logits[:, -1, :], rows)
        self._next = tokens
        self.stats.decode_steps += 1
        self.stats.rows_per_step[len(rows)] += 1
        self._emit(rows, tokens.tolist())

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor | None, positions: torch.Tensor, cache: Any,
                 last_only: bool, media: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, Any]:
        """Logits ``[B, q, V]`` (``q == 1`` with ``last_only``) and the cache, grown in place."""
        kwargs: dict[str, Any] = {"input_ids": ids, "use_cache": True}
        if media:
            kwargs.update({k: v.to(self.device) for k, v in media.items()})
        if mask is not None:
            kwargs["attention_mask"] = mask
        if self._positions:
            kwargs["position_ids"] = positions
        if self._direct is not None:
            base, head, cache_kw = self._direct
            kwargs[cache_kw] = cache
            hidden = base(**kwargs).last_hidden_state
            return head(hidden[:, -1:] if last_only else hidden), cache
        kwargs[self._cache_kw] = cache
        if last_only and self._keep:
            kwargs["logits_to_keep"] = 1
        out = self.model(**kwargs)
        returned = getattr(out, "cache", None)
        if returned is None:
            returned = getattr(out, "past_key_values", None)
        return out.logits, (cache if returned is None else returned)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        tokens = self._pick(logits, seqs)
        wanted = [i for i, s in enumerate(seqs) if s.top_logprobs is not None]
        if wanted:
            idx = torch.tensor(wanted, device=logits.device)
            logprobs = logits[idx].float().log_softmax(dim=-1)
            chosen = logprobs.gather(1, tokens[idx][:, None]).squeeze(1).tolist()
            k = max(seqs[i].top_logprobs or 0 for i in wanted)
            top = logprobs.topk(k, dim=-1) if k else None
            for row, i in enumerate(wanted):
                alts: list[tuple[int, float]] = []
                if top is not None:
                    n = seqs[i].top_logprobs or 0
                    alts = list(zip(top.indices[row, :n].tolist(), top.values[row, :n].tolist(), strict=True))
                seqs[i].last_logprob = (int(tokens[i]), chosen[row], alts)
        return tokens

    def _pick(self, logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
        params = [s.params for s in seqs]
        logits = logits.float()
        if any(s.constraint is not None for s in seqs):
            logits = torch.stack([s.constraint.mask(row) if s.constraint is not None else row
                                  for s, row in zip(seqs, logits, strict=True)])
        if self._eos is not None and any(s.n_out < s.min_tokens for s in seqs):
            early = [s.n_out < s.min_tokens for s in seqs]
            blocked = logits.index_fill(1, self._eos, float("-inf"))
            logits = blocked if all(early) else torch.where(
                torch.tensor(early, device=logits.device)[:, None], blocked, logits)
        if any(p.presence_penalty or p.frequency_penalty for p in params):
            counts = torch.zeros_like(logits)
            for i, s in enumerate(seqs):
                if s.detok.ids:
                    ids = torch.tensor(s.detok.ids, device=logits.device)
                    counts[i].scatter_add_(0, ids, torch.ones_like(ids, dtype=counts.dtype))
            presence = torch.tensor([p.presence_penalty for p in params], device=logits.device)
            frequency = torch.tensor([p.frequency_penalty for p in params], device=logits.device)
            logits = logits - presence[:, None] * (counts > 0) - frequency[:, None] * counts
        greedy = [p.greedy for p in params]
        if all(greedy):
            return logits.argmax(dim=-1)
        device = logits.device
        temps = torch.tensor([1.0 if g else p.temperature for p, g in zip(params, greedy, strict=True)], device=device)
        scaled = logits / temps[:, None]
        if any(p.top_k > 0 for p in params):
            vocab = scaled.shape[-1]
            ks = torch.tensor([min(p.top_k, vocab) if p.top_k > 0 else vocab for p in params], device=device)
            ordered = scaled.sort(dim=-1, descending=True).values
            kth = ordered.gather(1, (ks - 1)[:, None])
            scaled = scaled.masked_fill(scaled < kth, float("-inf"))
        if any(p.top_p < 1.0 for p in params):
            top_p = torch.tensor([p.top_p for p in params], device=device)
            ordered, order = scaled.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
            drop = probs.cumsum(dim=-1) - probs > top_p[:, None]
            ordered = ordered.masked_fill(drop, float("-inf"))
            scaled = torch.full_like(scaled, float("-inf")).scatter(1, order, ordered)
        probs = scaled.softmax(dim=-1)
        sampled = torch.empty(len(seqs), dtype=torch.long, device=device)
        shared = [i for i, s in enumerate(seqs) if s.generator is None]
        if shared:
            idx = torch.tensor(shared, device=device)
            sampled[idx] = torch.multinomial(probs[idx], 1).squeeze(1)
        for i, s in enumerate(seqs):
            if s.generator is not None:
                sampled[i] = torch.multinomial(probs[i], 1, generator=s.generator)[0]
        return torch.where(torch.tensor(greedy, device=device), logits.argmax(dim=-1), sampled)

    def _emit(self, seqs: list[Sequence], tokens: list[int]) -> None:
        events: dict[int, tuple[GenerationRequest, list[tuple[Any, ...]]]] = {}
        for seq, token in zip(seqs, tokens, strict=True):
            if seq.finish is not None:
                continue
            request = seq.request
            request.record.generated_tokens += 1
            if request.cancelled:
                continue
            seq.n_out += 1
            reason = None
            if seq.constraint is not None:
                seq.constraint.advance(token)
            eos = token in self.eos_ids and not seq.params.ignore_eos
            if seq.last_logprob is not None and not eos:
                seq.logprobs.append(seq.last_logprob)
            if eos:
                text, hit = seq.stops.feed(seq.detok.flush())
                reason = "stop"
                if not hit:
                    text += seq.stops.flush()
            else:
                text, hit = seq.stops.feed(seq.detok.add(token))
                if hit:
                    reason = "stop"
                elif seq.n_out >= seq.params.max_tokens:
                    more, hit = seq.stops.feed(seq.detok.flush())
                    text += more if hit else more + seq.stops.flush()
                    reason = "stop" if hit else "length"
            bucket = events.setdefault(id(request), (request, []))[1]
            if reason is not None:
                seq.finish = reason
                bucket.append(("finish", seq.index, text, reason))
            elif text:
                bucket.append(("delta", seq.index, text))
        # one wake-up of each event loop per step, not one per request
        by_loop: dict[int, list[tuple[GenerationRequest, list[tuple[Any, ...]]]]] = {}
        for request, bucket in events.values():
            if bucket:
                by_loop.setdefault(id(request.loop), []).append((request, bucket))
        for items in by_loop.values():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is listening
                items[0][0].loop.call_soon_threadsafe(_deliver, items)

    def _drop_done(self) -> None:
        if not self._rows:
            return
        keep = []
        for i, seq in enumerate(self._rows):
            if seq.finish is None and seq.request.cancelled:
                seq.finish = "cancelled"
            if seq.finish is None:
                keep.append(i)
        if len(keep) == len(self._rows):
            return
        gone = {id(s.request): s.request for s in self._rows if s.finish is not None}
        if not keep:
            self._reset_batch()
        else:
            idx = torch.tensor(keep, device=self.device)
            self._cache.batch_select_indices(idx)
            assert self._mask is not None and self._pos is not None and self._next is not None
            self._mask, self._pos, self._next = self._mask[idx], self._pos[idx], self._next[idx]
            self._rows = [self._rows[i] for i in keep]
            if self._can_join:
                first = int(self._mask.any(dim=0).nonzero()[0])
                if first > 0:
                    for layer in self._cache.layers:
                        layer.keys = layer.keys[:, :, first:]
                        layer.values = layer.values[:, :, first:]
                    self._mask = self._mask[:, first:]
                self._padded = not bool(self._mask.all())
        running = {id(s.request) for s in self._rows}
        for key, request in gone.items():
            if key not in running and all(s.finish is not None for s in request.sequences):
                self._finish_request(request, None)

    def _reset_batch(self) -> None:
        self._rows = []
        self._cache = self._mask = self._pos = self._next = None

    def _finish_request(self, request: GenerationRequest, error: OpenAIError | None) -> None:
        if request.record.done:
            return
        request.record.done = True
        if error is not None:
            request.post([("error", error)])

    def _fail_batch(self, exc: Exception, newcomers: list[Sequence]) -> None:
        oom = isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()
        if oom:
            error = OpenAIError("the accelerator ran out of memory; retry with fewer or shorter requests",
                                status=503, type="server_error", code="out_of_memory")
        else:
            error = OpenAIError(f"generation failed: {exc}", status=500, type="server_error",
                                code="generation_failed")
        requests = {id(s.request): s.request for s in [*self._rows, *newcomers]}
        self._reset_batch()
        for request in requests.values():
            self._finish_request(request, error)
        if not oom and "cuda" in str(exc).lower():
            self.error = str(exc)  # a device error leaves the process unusable
