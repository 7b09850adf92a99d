"""The OpenAI-compatible HTTP server: FastAPI routes over one ``Engine``.

    pasture serve --checkpoint stories260K.bin --tokenizer tok512.model   # 127.0.0.1:8000

    app = build_app(model, tokenizer, "stories260K")         # in Python: any ASGI server
    with ServerThread(app) as server:                         # uvicorn on a free loopback port
        openai.OpenAI(base_url=server.url + "/v1", api_key="none").completions.create(...)

Routes: ``/v1/completions`` and ``/v1/chat/completions`` (JSON or server-sent events),
``/v1/models``, ``/health``, ``/metrics`` (Prometheus text), and the chat page at ``/``.
With an API key every ``/v1`` route wants ``Authorization: Bearer KEY`` (401 otherwise); the
page, ``/health`` and ``/metrics`` stay open. A client that disconnects cancels its generation
at the engine's next step, whether it was streaming, waiting for JSON, or still queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException

from ..errors import PastureError
from ..finetune.rendering import TemplateRenderer
from ..finetune.template import (
    DEFAULT_TEMPLATE,
    chat_variables,
    encode_segments,
    find_template,
    load_template,
)
from ..generate.engine import Engine
from ..generate.engine import Request as EngineRequest
from ..generate.generate import TokenizerLike
from ..interop.loading import load_model
from ..model import Transformer
from ..model.quant import QuantConfig
from .metrics import Metrics
from .protocol import ApiError, ChunkWriter, Parsed, new_id, parse, response

CHAT_PAGE = "static/chat.html"


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


async def _cancel_on_disconnect(http: Request, request: EngineRequest) -> None:
    """Wait for the client to go away (the body is already read), then cancel."""
    while True:
        message = await http.receive()
        if message["type"] == "http.disconnect":
            request.cancel()
            return


class _Service:
    """What the routes do, for one model: authorize, parse, submit to the engine, answer."""

    def __init__(
        self,
        engine: Engine,
        metrics: Metrics,
        tokenizer: TokenizerLike,
        model_name: str,
        chat_template: str,
        api_key: str | None,
    ) -> None:
        self.engine, self.metrics, self.tokenizer = engine, metrics, tokenizer
        self.model_name, self.chat_template, self.api_key = model_name, chat_template, api_key
        self.started = time.time()
        # The template may come with a checkpoint: it renders in a child, bounded in time and
        # memory (finetune.rendering), off the event loop (``generate`` parses in a thread).
        self.renderer = TemplateRenderer(chat_template)
        self.variables = chat_variables(tokenizer)

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, bos=True)

    def encode_messages(self, messages: Sequence[dict[str, str]]) -> list[int]:
        try:
            segments = self.renderer.segments(messages, True, **self.variables)
            return encode_segments(self.tokenizer, segments)[0]
        except PastureError as e:
            raise ApiError(str(e), param="messages") from None

    def authorize(self, http: Request) -> None:
        if self.api_key is None:
            return
        scheme, _, token = http.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            token.encode(), self.api_key.encode()
        ):
            raise ApiError(
                "Incorrect API key provided: send Authorization: Bearer <the server's --api-key>",
                status=401,
                code="invalid_api_key",
            )

    def models(self) -> dict[str, Any]:
        card = {
            "id": self.model_name,
            "object": "model",
            "created": int(self.started),
            "owned_by": "pasture",
            "max_model_len": self.engine.max_seq_len,
        }
        return {"object": "list", "data": [card]}

    async def generate(self, http: Request, chat: bool) -> Any:
        self.authorize(http)
        try:
            body = await http.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ApiError("the request body is not valid JSON") from None
        parsed = await asyncio.to_thread(
            parse, body, chat, self.model_name, self.encode_text, self.encode_messages
        )
        request = self._submit(parsed, chat)
        rid = new_id(chat)
        if parsed.stream:
            return StreamingResponse(
                self._events(http, request, parsed, rid),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        watcher = asyncio.create_task(_cancel_on_disconnect(http, request))
        try:
            deltas = [delta async for delta in request.stream()]
        finally:
            watcher.cancel()
            request.cancel()
        finish = deltas[-1].finish_reason
        if finish == "error":
            error = ApiError(f"generation failed: {request.error}", 500, kind="server_error")
            return JSONResponse(error.body(), status_code=500)
        text = "".join(d.text for d in deltas)
        entries = [e for d in deltas for e in d.logprobs]
        finish = "stop" if finish == "cancelled" else finish
        return response(parsed, rid, self.model_name, text, entries, finish, request.usage)

    def _submit(self, parsed: Parsed, chat: bool) -> EngineRequest:
        """The engine's request for ``parsed``, or the 400 that says why there is none."""
        limit, param, n = (
            self.engine.max_seq_len,
            "messages" if chat else "prompt",
            len(parsed.prompt),
        )
        if n >= limit:
            raise ApiError(
                f"this model's maximum context length is {limit} tokens; the prompt has {n}: "
                "shorten it",
                param=param,
                code="context_length_exceeded",
            )
        if not parsed.max_tokens_given:  # chat without max_tokens: up to the context's end
            parsed = dataclasses.replace(
                parsed, params=dataclasses.replace(parsed.params, max_tokens=limit - n)
            )
        too_long = n + parsed.params.max_tokens > limit
        try:
            return self.engine.submit(
                parsed.prompt, parsed.params, "chat" if chat else "completions"
            )
        except PastureError as e:
            code = "context_length_exceeded" if too_long else None
            raise ApiError(str(e), param=param, code=code) from None

    async def _events(
        self, http: Request, request: EngineRequest, parsed: Parsed, rid: str
    ) -> AsyncIterator[str]:
        watcher = asyncio.create_task(_cancel_on_disconnect(http, request))
        try:
            writer = ChunkWriter(parsed, rid, self.model_name)
            first = writer.first()
            if first is not None:
                yield _sse(first)
            async for delta in request.stream():
                if delta.finish_reason == "error":
                    message = f"generation failed: {request.error}"
                    yield _sse(ApiError(message, 500, kind="server_error").body())
                    break
                for chunk in writer.delta(delta):
                    yield _sse(chunk)
            else:
                if parsed.include_usage:
                    yield _sse(writer.usage(request.usage))
            yield "data: [DONE]\n\n"
        finally:
            watcher.cancel()
            request.cancel()


def build_app(
    model: Transformer,
    tokenizer: TokenizerLike,
    model_name: str,
    *,
    chat_template: str = DEFAULT_TEMPLATE,
    api_key: str | None = None,
    max_batch: int = 8,
    max_seq_len: int | None = None,
    prefill_chunk: int = 128,
    compile: str | None = None,
) -> FastAPI:
    """The server for one model. The engine thread starts now and stops at the app's
    shutdown (``app.state.engine``); ``chat_template`` is a Jinja2 chat template (the model's
    own; ``finetune.template.DEFAULT_TEMPLATE``, Alpaca's headers, when it has none)."""
    metrics = Metrics()
    engine = Engine(
        model, tokenizer, max_batch, max_seq_len, prefill_chunk, metrics.finished, compile
    )
    service = _Service(engine, metrics, tokenizer, model_name, chat_template, api_key)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.close()
        service.renderer.close()

    app = FastAPI(title="Pasture", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine, app.state.metrics = engine, metrics
    app.state.renderer = service.renderer  # the chat template's child process

    @app.exception_handler(ApiError)
    async def api_error(_: Request, e: ApiError) -> JSONResponse:
        metrics.refuse(e.status)
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        metrics.refuse(e.status_code)
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(ApiError(str(e.detail), e.status_code, kind=kind).body(), e.status_code)

    @app.get("/", response_class=HTMLResponse)
    async def chat_page() -> HTMLResponse:
        return HTMLResponse((files("pasture.serve") / CHAT_PAGE).read_text(encoding="utf-8"))

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name}

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(engine), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models(http: Request) -> dict[str, Any]:
        service.authorize(http)
        return service.models()

    @app.post("/v1/completions")
    async def completions(http: Request) -> Any:
        return await service.generate(http, chat=False)

    @app.post("/v1/chat/completions")
    async def chat_completions(http: Request) -> Any:
        return await service.generate(http, chat=True)

    return app


class ServerThread:
    """uvicorn serving ``app`` in a background thread on ``host``:``port`` (0: a free port),
    for tests and benchmarks: ``with ServerThread(app) as s: ... s.url``."""

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def load_app(
    checkpoint: str | Path,
    *,
    tokenizer: str | Path | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    model_name: str | None = None,
    chat_template: str | Path | None = None,
    api_key: str | None = None,
    max_batch: int = 8,
    max_seq_len: int | None = None,
    quantize: QuantConfig | None = None,
    compile: str | None = None,
) -> FastAPI:
    """``build_app`` for ``checkpoint`` (any format ``pasture.interop`` reads; read onto
    ``device`` tensor by tensor, weight-only ``quantize`` applied there). The chat
    template: ``chat_template`` (a .jinja file or a tokenizer_config.json), else
    ``chat_template.jinja`` beside the checkpoint, else Alpaca's headers. The model is named
    after the checkpoint's file or folder unless ``model_name`` says otherwise."""
    path = Path(checkpoint)
    template = load_template(chat_template) if chat_template else find_template(path)
    model, tok = load_model(path, device, dtype, tokenizer=tokenizer, quantize=quantize)
    if tok is None:
        raise PastureError(f"{path}: no tokenizer in the checkpoint; pass --tokenizer FILE")
    return build_app(
        model,
        tok,
        model_name or (path.name if path.is_dir() else path.stem),
        chat_template=template or DEFAULT_TEMPLATE,
        api_key=api_key,
        max_batch=max_batch,
        max_seq_len=max_seq_len,
        compile=compile,
    )


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    *,
    log_level: str = "info",
    **options: Any,
) -> None:
    """Serve ``checkpoint`` on ``host``:``port`` until interrupted; ``options`` are
    ``load_app``'s (tokenizer, device, dtype, model_name, chat_template, max_batch,
    max_seq_len)."""
    app = load_app(checkpoint, api_key=api_key, **options)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
