"""OpenAI's request and response shapes: a request body becomes prompt ids and
``SamplingParams`` (or an ``ApiError`` with OpenAI's error body), engine output becomes
``text_completion`` / ``chat.completion`` objects and their streaming chunks.

Supported fields. Both endpoints: ``model``, ``max_tokens``, ``temperature`` (0..2; 0 greedy),
``top_p``, ``top_k`` (an extension, 0: off), ``seed``, ``stop`` (a string or up to 4),
``stream``, ``stream_options.include_usage``, ``n`` = 1. Completions: ``prompt`` (a string, a
list of one string, or token ids), ``logprobs`` (0..20), ``echo`` false. Chat: ``messages``
(system, user, assistant; content a string or a list of text parts), ``max_completion_tokens``,
``logprobs`` (bool) with ``top_logprobs`` (0..20). Fields OpenAI accepts that change nothing
here (``user``, zero penalties) are accepted; others that would need work we do not do are 400.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import PastureError
from ..generate.engine import MAX_LOGPROBS, Delta, SamplingParams, TokenLogprob

ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """A request refused with ``status`` and OpenAI's error body."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param,
            code,
            kind,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass
class Parsed:
    """A validated request: what the engine needs and how to answer."""

    chat: bool
    prompt: list[int]
    params: SamplingParams
    stream: bool
    include_usage: bool
    max_tokens_given: bool


def _get(body: dict[str, Any], name: str, kinds: type | tuple[type, ...], default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise ApiError(f"{name} must be {_kind_name(kinds)}, got {value!r}", param=name)
    if not isinstance(value, kinds):
        raise ApiError(f"{name} must be {_kind_name(kinds)}, got {value!r}", param=name)
    return value


def _kind_name(kinds: type | tuple[type, ...]) -> str:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _stop(body: dict[str, Any]) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise ApiError("stop must be a non-empty string or a list of them", param="stop")
    if len(stop) > 4:
        raise ApiError("stop takes at most 4 strings", param="stop")
    return tuple(stop)


def _message_text(message: Any, i: int) -> dict[str, str]:
    if not isinstance(message, dict):
        raise ApiError(f"messages[{i}] must be an object", param=f"messages[{i}]")
    role = message.get("role")
    if role not in ROLES:
        raise ApiError(
            f"messages[{i}].role {role!r} is not one of {', '.join(ROLES)}",
            param=f"messages[{i}].role",
        )
    content = message.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, dict) and part.get("type") == "text"):
                raise ApiError(
                    f"messages[{i}].content: only text parts are supported",
                    param=f"messages[{i}].content",
                )
            parts.append(str(part.get("text", "")))
        content = "".join(parts)
    if not isinstance(content, str):
        raise ApiError(
            f"messages[{i}].content must be a string or a list of text parts",
            param=f"messages[{i}].content",
        )
    return {"role": role, "content": content}


def parse(body: Any, chat: bool, model_name: str, encode_text: Any, encode_messages: Any) -> Parsed:
    """Validate a request body (JSON already decoded). ``encode_text(str) -> ids`` and
    ``encode_messages(messages) -> ids`` turn the prompt into token ids."""
    if not isinstance(body, dict):
        raise ApiError("the request body must be a JSON object")
    model = body.get("model")
    if model != model_name:
        raise ApiError(
            f"the model {model!r} does not exist; this server has {model_name!r}",
            param="model",
            code="model_not_found",
        )
    if _get(body, "n", int, 1) != 1:
        raise ApiError("n must be 1", param="n")
    for name in ("presence_penalty", "frequency_penalty"):
        if _get(body, name, (int, float), 0) != 0:
            raise ApiError(f"{name} is not supported (only 0)", param=name)
    if body.get("logit_bias"):
        raise ApiError("logit_bias is not supported", param="logit_bias")
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise ApiError("messages must be a non-empty list", param="messages")
        prompt = encode_messages([_message_text(m, i) for i, m in enumerate(messages)])
        max_name = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        max_tokens = _get(body, max_name, int, None)
        logprobs = None
        if _get(body, "logprobs", bool, False):
            logprobs = _get(body, "top_logprobs", int, 0)
            if not 0 <= logprobs <= MAX_LOGPROBS:
                raise ApiError(f"top_logprobs must be in 0..{MAX_LOGPROBS}", param="top_logprobs")
        elif body.get("top_logprobs") is not None:
            raise ApiError("top_logprobs needs logprobs: true", param="top_logprobs")
    else:
        if _get(body, "echo", bool, False) or body.get("best_of", 1) not in (1, None):
            raise ApiError("echo and best_of are not supported", param="echo")
        prompt = _completion_prompt(body.get("prompt"), encode_text)
        max_name = "max_tokens"
        max_tokens = _get(body, "max_tokens", int, 16)
        logprobs = _get(body, "logprobs", int, None)
        if logprobs is not None and not 0 <= logprobs <= MAX_LOGPROBS:
            raise ApiError(f"logprobs must be in 0..{MAX_LOGPROBS}", param="logprobs")
    if max_tokens is not None and max_tokens < 0:
        raise ApiError(f"{max_name} must be at least 0, got {max_tokens}", param=max_name)
    stream = _get(body, "stream", bool, False)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError("stream_options must be an object", param="stream_options")
    include_usage = bool(options.get("include_usage", False))
    try:
        params = SamplingParams(
            max_tokens=0 if max_tokens is None else max_tokens,
            temperature=_get(body, "temperature", (int, float), 1.0),
            top_p=_get(body, "top_p", (int, float), 1.0),
            top_k=_get(body, "top_k", int, 0),
            seed=_get(body, "seed", int, None),
            stop=_stop(body),
            logprobs=logprobs,
        )
    except PastureError as e:
        raise ApiError(str(e)) from None
    return Parsed(chat, prompt, params, stream, include_usage, max_tokens is not None)


def _completion_prompt(prompt: Any, encode_text: Any) -> list[int]:
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return encode_text(prompt)
    if isinstance(prompt, list) and prompt and all(type(t) is int for t in prompt):
        return list(prompt)
    raise ApiError(
        "prompt must be a string or a list of token ids (one prompt per request)", param="prompt"
    )


def new_id(chat: bool) -> str:
    return ("chatcmpl-" if chat else "cmpl-") + secrets.token_hex(12)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion_logprobs(entries: Sequence[TokenLogprob], offset: int = 0) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object; ``offset``: characters already sent."""
    offsets = []
    for entry in entries:
        offsets.append(offset)
        offset += len(entry.text)
    return {
        "tokens": [e.text for e in entries],
        "token_logprobs": [e.logprob for e in entries],
        "top_logprobs": [{text: lp for _, text, lp in e.top} for e in entries],
        "text_offset": offsets,
    }


def chat_logprobs(entries: Sequence[TokenLogprob]) -> dict[str, Any]:
    def item(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {
        "content": [
            item(e.text, e.logprob) | {"top_logprobs": [item(t, lp) for _, t, lp in e.top]}
            for e in entries
        ]
    }


def response(
    parsed: Parsed,
    rid: str,
    model: str,
    text: str,
    entries: Sequence[TokenLogprob],
    finish_reason: str,
    counts: tuple[int, int],
) -> dict[str, Any]:
    """The whole (non-streaming) answer."""
    wants = parsed.params.logprobs is not None
    if parsed.chat:
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "logprobs": chat_logprobs(entries) if wants else None,
            "finish_reason": finish_reason,
        }
    else:
        choice = {
            "index": 0,
            "text": text,
            "logprobs": completion_logprobs(entries) if wants else None,
            "finish_reason": finish_reason,
        }
    return {
        "id": rid,
        "object": "chat.completion" if parsed.chat else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": [choice],
        "usage": usage(*counts),
    }


class ChunkWriter:
    """The streaming chunks of one answer, in order: (chat) a first delta with the role, one
    chunk per delta that adds text or logprobs, a last chunk with ``finish_reason``, a usage
    chunk (``include_usage``: empty ``choices``; every other chunk then has ``usage`` null)."""

    def __init__(self, parsed: Parsed, rid: str, model: str) -> None:
        self.parsed, self.rid, self.model = parsed, rid, model
        self.created = int(time.time())
        self.offset = 0

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        chunk = {
            "id": self.rid,
            "object": "chat.completion.chunk" if self.parsed.chat else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if self.parsed.include_usage:
            chunk["usage"] = None
        return chunk

    def first(self) -> dict[str, Any] | None:
        if not self.parsed.chat:
            return None
        delta = {"role": "assistant", "content": ""}
        return self._chunk([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    def delta(self, delta: Delta) -> list[dict[str, Any]]:
        """The chunks for one engine delta: its text and logprobs, then (on the last delta) a
        chunk of its own with the empty delta and ``finish_reason``."""
        chunks = []
        wants = self.parsed.params.logprobs is not None and bool(delta.logprobs)
        if delta.text or wants:
            chunks.append(self._chunk([self._choice(delta.text, delta.logprobs, wants, None)]))
        if delta.finish_reason is not None:
            finish = (
                "stop" if delta.finish_reason in ("cancelled", "error") else delta.finish_reason
            )
            chunks.append(self._chunk([self._choice("", (), False, finish)]))
        return chunks

    def _choice(
        self, text: str, logprobs: Sequence[TokenLogprob], wants: bool, finish: str | None
    ) -> dict[str, Any]:
        if self.parsed.chat:
            return {
                "index": 0,
                "delta": {"content": text} if text else {},
                "logprobs": chat_logprobs(logprobs) if wants else None,
                "finish_reason": finish,
            }
        choice = {
            "index": 0,
            "text": text,
            "logprobs": completion_logprobs(logprobs, self.offset) if wants else None,
            "finish_reason": finish,
        }
        if wants:
            self.offset += sum(len(e.text) for e in logprobs)
        return choice

    def usage(self, counts: tuple[int, int]) -> dict[str, Any]:
        chunk = self._chunk([])
        chunk["usage"] = usage(*counts)
        return chunk
