"""The serving engine: continuous batching over a ``StaticCache``, one background thread.

    engine = Engine(model, tokenizer, max_batch=8)
    request = engine.submit(tokenizer.encode("Once upon a time", bos=True),
                            SamplingParams(max_tokens=50, temperature=0.8, seed=1, stop=("\\n",)))
    for delta in request:               # or ``async for delta in request.stream()``
        print(delta.text, end="")       # delta.token_ids, delta.logprobs, delta.finish_reason
    request.usage                       # (prompt_tokens, completion_tokens)
    engine.close()

Each request owns one row of the cache while it runs. Between two decode steps the engine
admits waiting requests into free rows and runs one prefill chunk (at most ``prefill_chunk``
prompt tokens of one request), so a long prompt never stalls the running requests for longer
than one chunk; a finished or cancelled request leaves its row at once. A decode step always
runs every row of the cache (idle rows recompute a harmless entry), so its shapes never change
and each row's arithmetic is the same whoever else is in the batch: a greedy sequence decodes
bit for bit as it does alone (tests/serve/test_engine.py) on CPU when the model's widths are
multiples of 64, as every LLaMA size's are (CPU elementwise kernels round the part of a tensor
past the last whole vector block differently; llama2.c's tiny models have a 172-wide SwiGLU).
Sampling uses one generator per request (``seed``), so a seeded request gives the same tokens
whatever runs beside it.

On CPU (unless the step is compiled) the engine stores the model's float32 linear weights in
oneDNN's packed layout for ``max_batch``-row products (``packed.pack_linears``, in place; the
state dict is unchanged): MKL repacks every weight on every call, which made an 8-row step 2×
slower than one row.

Stop strings may span tokens: text that could still become a stop string is held back, and the
stop string itself is never emitted. EOS and BOS (a new document) stop a sequence too; they are
counted in ``completion_tokens`` but produce no text. Text deltas come from ``StreamDecoder``,
so they never split a UTF-8 character.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import operator
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import PastureError
from ..model import Transformer
from . import packed
from .cache import StaticCache
from .generate import StreamDecoder, TokenizerLike, use_decode_layout
from .sampling import sample

MAX_LOGPROBS = 20  # OpenAI's limit on top alternatives


@dataclass(frozen=True)
class SamplingParams:
    """How one request is continued. ``temperature`` 0 is greedy; ``top_k`` 0 keeps every token;
    ``seed`` None draws a fresh seed; ``logprobs`` None returns none, 0 the chosen token's,
    N also the N most likely alternatives at each step."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None

    def __post_init__(self) -> None:
        def integer(name: str, value: object, low: int, high: int | None = None) -> int:
            if isinstance(value, bool) or not hasattr(value, "__index__"):
                raise PastureError(f"{name} must be an integer, got {value!r}")
            value = operator.index(value)
            if value < low or (high is not None and value > high):
                bound = f"in {low}..{high}" if high is not None else f"at least {low}"
                raise PastureError(f"{name} must be {bound}, got {value}")
            return value

        def number(name: str, value: object, low: float, high: float) -> float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise PastureError(f"{name} must be a number, got {value!r}")
            if not (math.isfinite(value) and low <= value <= high):
                raise PastureError(f"{name} must be in {low}..{high}, got {value}")
            return float(value)

        object.__setattr__(self, "max_tokens", integer("max_tokens", self.max_tokens, 0))
        object.__setattr__(self, "temperature", number("temperature", self.temperature, 0, 2))
        object.__setattr__(self, "top_p", number("top_p", self.top_p, 0, 1))
        if self.top_p <= 0:
            raise PastureError(f"top_p must be above 0, got {self.top_p}")
        object.__setattr__(self, "top_k", integer("top_k", self.top_k, 0))
        if self.seed is not None:
            object.__setattr__(self, "seed", integer("seed", self.seed, -(2**63), 2**64 - 1))
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)
        if not all(isinstance(s, str) and s for s in stop):
            raise PastureError(f"stop must be non-empty strings, got {self.stop!r}")
        object.__setattr__(self, "stop", stop)
        if self.logprobs is not None:
            logprobs = integer("logprobs", self.logprobs, 0, MAX_LOGPROBS)
            object.__setattr__(self, "logprobs", logprobs)


@dataclass(frozen=True)
class TokenLogprob:
    """One chosen token: its id, its text (the characters it added; the texts of a request's
    tokens join to its output when no stop string cut it), its log-probability under the model
    (before temperature and truncation), and the ``logprobs`` most likely tokens' (id, text,
    logprob), most likely first."""

    token_id: int
    text: str
    logprob: float
    top: tuple[tuple[int, str, float], ...] = ()


@dataclass(frozen=True)
class Delta:
    """What one engine step added to a request: new text, the tokens chosen (text may lag them
    while a stop string could be starting), their logprobs when asked, and ``finish_reason``
    on the last delta: "stop" (EOS/BOS or a stop string), "length" (max_tokens or the context
    end), "cancelled", or "error" (``Request.error`` says why)."""

    text: str
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[TokenLogprob, ...] = ()
    finish_reason: str | None = None


_ids = itertools.count()


class Request:
    """A submitted prompt: iterate it (blocking) or ``stream()`` it (asyncio) for its deltas;
    ``cancel()`` from any thread ends it at the next engine step."""

    def __init__(self, prompt: Sequence[int], params: SamplingParams, label: str = "") -> None:
        self.id = next(_ids)
        self.label = label  # the caller's name for it (the server's endpoint, in metrics)
        self.prompt = list(prompt)
        self.params = params
        self.prompt_tokens = len(self.prompt)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.error: BaseException | None = None
        self.submitted = time.monotonic()
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self._deltas: list[Delta] = []
        self._lock = threading.Condition()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []
        self._cancelled = False

    @property
    def usage(self) -> tuple[int, int]:
        """(prompt_tokens, completion_tokens): the prompt's ids and every token generated."""
        return self.prompt_tokens, self.completion_tokens

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    def cancel(self) -> None:
        """Stop generating (thread-safe, idempotent); the last delta says "cancelled"."""
        self._cancelled = True

    def _push(self, delta: Delta) -> None:
        with self._lock:
            if self.finish_reason is not None:
                return
            if delta.token_ids and self.first_token_at is None:
                self.first_token_at = time.monotonic()
            if delta.finish_reason is not None:
                self.finish_reason = delta.finish_reason
                self.finished_at = time.monotonic()
            self._deltas.append(delta)
            self._lock.notify_all()
            waiters = list(self._waiters)
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody listens any more
                loop.call_soon_threadsafe(event.set)

    def __iter__(self) -> Iterator[Delta]:
        seen = 0
        while True:
            with self._lock:
                while len(self._deltas) <= seen:
                    self._lock.wait()
                new = self._deltas[seen:]
            seen += len(new)
            yield from new
            if new[-1].finish_reason is not None:
                return

    async def stream(self) -> AsyncIterator[Delta]:
        """The deltas in an asyncio task, without a thread per request."""
        loop, event = asyncio.get_running_loop(), asyncio.Event()
        with self._lock:
            self._waiters.append((loop, event))
        seen = 0
        try:
            while True:
                event.clear()
                with self._lock:
                    new = self._deltas[seen:]
                seen += len(new)
                for delta in new:
                    yield delta
                if new and new[-1].finish_reason is not None:
                    return
                if not new:
                    await event.wait()
        finally:
            with self._lock:
                self._waiters.remove((loop, event))

    def result(self) -> tuple[str, list[int], list[TokenLogprob], str]:
        """Block until done: (text, token ids, logprobs, finish_reason)."""
        deltas = list(self)
        text = "".join(d.text for d in deltas)
        ids = [t for d in deltas for t in d.token_ids]
        return text, ids, [lp for d in deltas for lp in d.logprobs], deltas[-1].finish_reason


@dataclass
class _Row:
    """A request running in one cache row: its position and its text state."""

    request: Request
    generator: torch.Generator
    decoder: StreamDecoder
    prefilled: int = 0  # prompt tokens whose keys are in the cache
    last: int = 0  # the token to feed next
    text: str = ""  # every character decoded so far
    sent: int = 0  # characters of ``text`` already emitted
    holdback: int = field(init=False, default=0)

    @property
    def position(self) -> int:
        """Where the next token's key goes."""
        return self.prefilled + self.request.completion_tokens - 1


class Engine:
    """Continuous batching over ``max_batch`` rows of ``max_seq_len`` positions (default: the
    model's context). ``submit`` is thread-safe; one thread runs the model.

    For monitoring: ``waiting`` (queue length), ``running``, ``finished`` (requests ended, by
    finish reason), ``stats`` (prompt tokens prefilled, tokens generated, decode steps), and
    ``on_finish(request)``, called in the engine thread as each request ends."""

    def __init__(
        self,
        model: Transformer,
        tokenizer: TokenizerLike,
        max_batch: int = 8,
        max_seq_len: int | None = None,
        prefill_chunk: int = 128,
        on_finish: Callable[[Request], None] | None = None,
        compile: str | None = None,
    ) -> None:
        if max_batch < 1 or prefill_chunk < 1:
            raise PastureError("max_batch and prefill_chunk must be at least 1")
        if compile not in (None, "eager", "inductor"):
            raise PastureError(f"compile = {compile!r}: use inductor, eager, or leave it unset")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.device = model.tok_embeddings.weight.device
        if self.device.type == "cpu" and compile is None and packed.available():
            packed.pack_linears(model, max_batch)  # the decode step's products, 2-2.7x faster
        elif self.device.type == "cpu":
            use_decode_layout(model)
        self.cache = StaticCache(model, max_batch, max_seq_len, "lower max_batch or max_seq_len")
        self._decode_logits = self._compiled(compile)
        self.max_batch, self.max_seq_len = max_batch, self.cache.max_seq_len
        self.prefill_chunk = prefill_chunk
        self.on_finish = on_finish  # called in the engine thread as each request ends
        self.stop_ids = {tokenizer.eos_id, tokenizer.bos_id}
        self.rows: list[_Row | None] = [None] * max_batch
        self.queue: deque[Request] = deque()
        self.stats = {"prompt_tokens": 0, "completion_tokens": 0, "decode_steps": 0}
        self.finished: dict[str, int] = {}
        self._wake = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="pasture-engine", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return len(self.queue)

    @property
    def running(self) -> int:
        return sum(row is not None for row in self.rows)

    def check_prompt(self, prompt: Sequence[int], max_tokens: int) -> None:
        """Refuse (PastureError) a prompt the context cannot hold with ``max_tokens`` more."""
        if not prompt:
            raise PastureError("the prompt is empty (it needs at least one token)")
        if any(not 0 <= t < self.model.args.vocab_size for t in prompt):
            raise PastureError(f"prompt token ids must be in 0..{self.model.args.vocab_size - 1}")
        if len(prompt) + max_tokens > self.max_seq_len:
            raise PastureError(
                f"this model's maximum context length is {self.max_seq_len} tokens; the request "
                f"needs {len(prompt) + max_tokens} ({len(prompt)} in the prompt, {max_tokens} "
                "to generate): shorten the prompt or lower max_tokens"
            )

    def submit(
        self, prompt: Sequence[int], params: SamplingParams | None = None, label: str = ""
    ) -> Request:
        """Queue ``prompt`` (token ids, usually beginning with BOS); returns at once."""
        params = params or SamplingParams()
        self.check_prompt(prompt, params.max_tokens)
        request = Request(prompt, params, label)
        with self._wake:
            if self._closed:
                raise PastureError("the engine is closed")
            self.queue.append(request)
            self._wake.notify()
        return request

    def close(self) -> None:
        """Stop the thread; requests still queued or running end with "cancelled"."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join()
        self.cache.close()

    # The engine thread.

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self._wake:
                    while not self._closed and not self.queue and self.running == 0:
                        self._wake.wait()
                    if self._closed:
                        break
                try:
                    self._step()
                except Exception as e:  # a failed forward ends the requests it served
                    for i, row in enumerate(self.rows):
                        if row is not None:
                            row.request.error = e
                            self._finish(i, "error")
        for i, row in enumerate(self.rows):
            if row is not None:
                self._finish(i, "cancelled")
        while self.queue:
            request = self.queue.popleft()
            self._end(request, Delta("", finish_reason="cancelled"))

    def _end(self, request: Request, delta: Delta) -> None:
        """Push a request's last delta, count it, tell ``on_finish``."""
        self.finished[delta.finish_reason] = self.finished.get(delta.finish_reason, 0) + 1
        request._push(delta)
        if self.on_finish is not None:
            self.on_finish(request)

    def _step(self) -> None:
        """Drop cancelled requests, admit queued ones into free rows (first come, first
        served), run one prefill chunk, then one decode step."""
        for i, row in enumerate(self.rows):
            if row is not None and row.request.cancelled:
                self._finish(i, "cancelled")
        with self._wake:
            for request in [r for r in self.queue if r.cancelled]:
                self.queue.remove(request)
                self._end(request, Delta("", finish_reason="cancelled"))
            for i in range(self.max_batch):
                if self.rows[i] is None and self.queue:
                    self._admit(i, self.queue.popleft())
        prefilling = [
            i for i, r in enumerate(self.rows) if r and r.prefilled < r.request.prompt_tokens
        ]
        if prefilling:
            self._prefill_chunk(min(prefilling, key=lambda i: self.rows[i].request.id))
        if any(r is not None and r.prefilled == r.request.prompt_tokens for r in self.rows):
            self._decode()

    def _admit(self, i: int, request: Request) -> None:
        seed = request.params.seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,)))
        generator = torch.Generator(device=self.device).manual_seed(seed % 2**64)
        decoder = StreamDecoder(self.tokenizer, request.prompt)
        self.rows[i] = _Row(request, generator, decoder)
        self.stats["prompt_tokens"] += request.prompt_tokens

    def _prefill_chunk(self, i: int) -> None:
        row = self.rows[i]
        start = row.prefilled
        end = min(start + self.prefill_chunk, row.request.prompt_tokens)
        tokens = torch.tensor([row.request.prompt[start:end]], device=self.device)  # (1, T)
        positions = torch.arange(start, end, device=self.device)[None]  # (1, T)
        self.cache.select(torch.tensor([i], device=self.device))
        h = self.model.hidden(tokens, positions=positions)  # (1, T, dim)
        row.prefilled = end
        if end == row.request.prompt_tokens:
            if row.request.params.max_tokens == 0:
                self._finish(i, "length")
                return
            self._choose({i: self.model.logits(h[:, -1])[0]})

    def _decode(self) -> None:
        """One token for every decoding row; every cache row is computed (fixed shapes)."""
        tokens = torch.zeros(self.max_batch, 1, dtype=torch.long)  # (B, 1)
        positions = torch.zeros(self.max_batch, 1, dtype=torch.long)  # (B, 1)
        decoding = []
        for i, row in enumerate(self.rows):
            if row is None:
                continue
            if row.prefilled == row.request.prompt_tokens:
                tokens[i, 0], positions[i, 0] = row.last, row.position
                decoding.append(i)
            else:  # a harmless write: the next prefill chunk overwrites this position
                positions[i, 0] = row.prefilled
        self.cache.select(None)
        logits = self._decode_logits(tokens.to(self.device), positions.to(self.device))
        self.stats["decode_steps"] += 1
        self._choose({i: logits[i] for i in decoding})

    def _step_logits(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The decode step: (B, 1) tokens at (B, 1) positions → (B, vocab) logits."""
        h = self.model.hidden(tokens, positions=positions)
        return self.model.logits(h[:, -1])

    def _compiled(self, mode: str | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The decode step as run: eager (None); "inductor": compiled whole, with CUDA graphs
        on a GPU (gpt-fast's ``reduce-overhead``); "eager": traced whole by torch.compile but run
        eagerly (a check that the step has no graph break or host sync)."""
        if mode is None:
            return self._step_logits
        if mode == "eager":
            return torch.compile(self._step_logits, backend="eager", fullgraph=True)
        reduce = "reduce-overhead" if self.device.type == "cuda" else None
        return torch.compile(self._step_logits, mode=reduce, fullgraph=True)

    def _choose(self, logits: dict[int, torch.Tensor]) -> None:
        """Sample each row's next token from its logits (vocab,) and emit what it adds."""
        for i, row_logits in logits.items():
            row = self.rows[i]
            params = row.request.params
            token = int(
                sample(
                    row_logits[None], params.temperature, params.top_p, params.top_k, row.generator
                )[0]
            )
            row.request.completion_tokens += 1
            self.stats["completion_tokens"] += 1
            row.last = token
            logprobs: tuple[TokenLogprob, ...] = ()
            if token in self.stop_ids:
                self._finish(i, "stop")
                continue
            fragment = row.decoder.push(token)
            if params.logprobs is not None:
                logprobs = (self._logprob(row_logits, token, fragment, params.logprobs),)
            row.text += fragment
            finish = self._stop_string(row)
            if finish is None and row.request.completion_tokens >= params.max_tokens:
                finish = "length"
            if finish is None and row.position >= self.max_seq_len:
                finish = "length"
            text = row.text[row.sent : len(row.text) - row.holdback]
            row.sent += len(text)
            if finish is None:
                row.request._push(Delta(text, (token,), logprobs))
            else:
                if finish == "length":  # nothing more can come: release what was held back
                    text += row.text[row.sent :]
                self.rows[i] = None
                self._end(row.request, Delta(text, (token,), logprobs, finish))

    def _stop_string(self, row: _Row) -> str | None:
        """Cut ``row.text`` at the first stop string ("stop"), or set how many characters at
        its end must wait because a stop string could begin there."""
        stops = row.request.params.stop
        if not stops:
            return None
        longest = max(len(s) for s in stops)
        search_from = max(row.sent - longest + 1, 0)
        hits = [at for s in stops if (at := row.text.find(s, search_from)) >= 0]
        if hits:
            row.text = row.text[: min(hits)]
            row.holdback = 0
            return "stop"
        row.holdback = 0
        for n in range(min(longest - 1, len(row.text) - row.sent), 0, -1):
            tail = row.text[-n:]
            if any(s.startswith(tail) for s in stops):
                row.holdback = n
                break
        return None

    def _logprob(self, logits: torch.Tensor, token: int, text: str, top: int) -> TokenLogprob:
        logprobs = torch.log_softmax(logits.float(), dim=-1)  # (vocab,)
        alternatives: tuple[tuple[int, str, float], ...] = ()
        if top:
            values, ids = logprobs.topk(min(top, logprobs.shape[-1]))
            alternatives = tuple(
                (i, self._piece_text(i), v)
                for i, v in zip(ids.tolist(), values.tolist(), strict=True)
            )
        return TokenLogprob(token, text, float(logprobs[token]), alternatives)

    def _piece_text(self, token: int) -> str:
        """A token's text on its own, as an alternative: SentencePiece's "▁" is a space."""
        piece = getattr(self.tokenizer, "id_to_piece", None)
        if piece is None:
            return self.tokenizer.decode([token])
        return piece(token).replace("\u2581", " ")

    def _finish(self, i: int, reason: str) -> None:
        row = self.rows[i]
        text = row.text[row.sent :] if reason == "stop" else ""
        self.rows[i] = None
        self._end(row.request, Delta(text, finish_reason=reason))


__all__ = ["Delta", "Engine", "Request", "SamplingParams", "TokenLogprob"]
