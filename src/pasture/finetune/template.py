"""Chat templates: Jinja2 over Hugging Face's ``messages`` + ``add_generation_prompt``, rendered
in a sandbox exactly as ``transformers`` renders ``chat_template`` (the same environment
options, ``raise_exception`` and ``tojson``), and token ids with the response positions marked.

    template = load_template(None)                  # DEFAULT_TEMPLATE; or a .jinja file
    text = render(template, messages, add_generation_prompt=True, bos_token="<s>", eos_token="</s>")
    ids, is_response = encode_chat(tokenizer, template, messages)
    save_template(export_dir, template)             # chat_template.jinja, beside the weights

The response of each assistant turn is the text the template adds between rendering the chat
up to that turn with ``add_generation_prompt=True`` and rendering it through that turn: the
answer and the end-of-sequence token, never the role header. Templates must render each
conversation as a prefix of its continuations (every published chat template does).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import PastureError
from ..files import write_text

TEMPLATE_FILE = "chat_template.jinja"  # Hugging Face's name for a template beside a checkpoint
ROLES = ("system", "user", "assistant")

# Alpaca's headers (Taori et al. 2023), one turn after another; BOS once, EOS after each answer:
#   <s>SYSTEM\n\n### Instruction:\nUSER\n\n### Response:\nANSWER</s>\n\n### Instruction:\n...
DEFAULT_TEMPLATE = """\
{{- bos_token }}
{%- for message in messages %}
    {%- if not loop.first %}{{ '\\n\\n' }}{% endif %}
    {%- if message['role'] == 'system' %}
        {{- message['content'] }}
    {%- elif message['role'] == 'user' %}
        {{- '### Instruction:\\n' + message['content'] }}
    {%- elif message['role'] == 'assistant' %}
        {{- '### Response:\\n' + message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('unknown role ' + message['role'] + ': use system, user, assistant') }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '\\n\\n' if messages else '' }}{{ '### Response:\\n' }}
{%- endif %}
"""


class TokenizerLike(Protocol):
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def id_to_piece(self, i: int) -> str: ...


def _tojson(
    x: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # transformers' override: Jinja's own tojson escapes HTML characters.
    return json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env


@lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    try:
        return _environment().from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise PastureError(f"chat template line {e.lineno}: {e.message}") from None


def check_syntax(template: str) -> None:
    """Parse only: compiling folds constant expressions (``{{ 'x' * 3000000000 }}`` runs at
    compile time), so a template nobody has read is compiled only where limits hold
    (``finetune.rendering``)."""
    try:
        _environment().parse(template)
    except jinja2.TemplateSyntaxError as e:
        raise PastureError(f"chat template line {e.lineno}: {e.message}") from None


def render(
    template: str,
    messages: Sequence[dict[str, str]],
    add_generation_prompt: bool = False,
    **variables: str,
) -> str:
    """The template's text for ``messages`` (``bos_token``, ``eos_token`` … as ``variables``)."""
    try:
        return _compile(template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **variables
        )
    except jinja2.exceptions.SecurityError as e:
        raise PastureError(f"chat template: refused by the sandbox ({e})") from None
    except jinja2.TemplateError as e:
        raise PastureError(f"chat template: {e}") from None


def load_template(path: str | Path | None) -> str:
    """The template in ``path`` (a Jinja file, or a Hugging Face ``tokenizer_config.json`` whose
    ``chat_template`` is a string), or ``DEFAULT_TEMPLATE`` for None. Its syntax is checked
    (parsed, not compiled: see ``check_syntax``)."""
    if path is None:
        return DEFAULT_TEMPLATE
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PastureError(f"{path}: no such chat template") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PastureError(f"{path}: cannot read the chat template ({e})") from None
    if path.suffix == ".json":
        try:
            text = json.loads(text)["chat_template"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise PastureError(f"{path}: no chat_template string in this JSON file") from None
        if not isinstance(text, str):
            raise PastureError(f"{path}: chat_template is not one string (named templates)")
    try:
        check_syntax(text)
    except PastureError as e:
        raise PastureError(f"{path}: {e}") from None
    return text


def save_template(dst_dir: str | Path, template: str) -> Path:
    """Write ``template`` as ``dst_dir/chat_template.jinja`` (atomically); return the path."""
    path = Path(dst_dir) / TEMPLATE_FILE
    write_text(path, template)
    return path


def find_template(checkpoint_dir: str | Path) -> str | None:
    """The template saved beside a checkpoint (``chat_template.jinja``), or None."""
    path = Path(checkpoint_dir)
    path = (path if path.is_dir() else path.parent) / TEMPLATE_FILE
    return load_template(path) if path.is_file() else None


def _special_tokens(tokenizer: TokenizerLike) -> dict[str, int]:
    return {
        tokenizer.id_to_piece(tokenizer.bos_id): tokenizer.bos_id,
        tokenizer.id_to_piece(tokenizer.eos_id): tokenizer.eos_id,
    }


def encode_text(tokenizer: TokenizerLike, text: str, specials: dict[str, int]) -> list[int]:
    """Token ids of ``text`` where each special piece (``<s>``, ``</s>``) is its control id and
    the text between them is encoded by the tokenizer (as Hugging Face's tokenizers split)."""
    ids: list[int] = []
    start = 0
    while start < len(text):
        found = [(text.find(s, start), s) for s in specials]
        hits = [(at, s) for at, s in found if at >= 0]
        at, special = min(hits) if hits else (len(text), "")
        if at > start:
            ids += tokenizer.encode(text[start:at])
        if special:
            ids.append(specials[special])
        start = at + len(special)
    return ids


def chat_segments(
    template: str,
    messages: Sequence[dict[str, str]],
    add_generation_prompt: bool = False,
    **variables: str,
) -> list[tuple[str, bool]]:
    """The rendered chat cut into (text, is_response) pieces whose concatenation is
    ``render(template, messages, add_generation_prompt, **variables)``."""
    segments: list[tuple[str, bool]] = []
    done = ""
    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prompt = render(template, messages[:i], True, **variables)
        full = render(template, messages[: i + 1], False, **variables)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise PastureError(
                f"chat template: rendering message {i + 1} does not extend the text before it "
                "(the template must render a chat as a prefix of its continuations)"
            )
        segments += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    final = render(template, messages, add_generation_prompt, **variables)
    if not final.startswith(done):
        raise PastureError("chat template: the whole chat does not extend its last answer")
    segments.append((final[len(done) :], False))
    return [(text, response) for text, response in segments if text]


def chat_variables(tokenizer: TokenizerLike) -> dict[str, str]:
    """The variables a template sees besides the chat: ``bos_token`` and ``eos_token`` pieces."""
    bos, eos = (tokenizer.id_to_piece(i) for i in (tokenizer.bos_id, tokenizer.eos_id))
    return {"bos_token": bos, "eos_token": eos}


def encode_segments(
    tokenizer: TokenizerLike, segments: Sequence[tuple[str, bool]]
) -> tuple[list[int], list[bool]]:
    """``encode_chat`` of segments already rendered (``chat_segments``' output)."""
    specials = _special_tokens(tokenizer)
    ids: list[int] = []
    is_response: list[bool] = []
    for text, response in segments:
        piece = encode_text(tokenizer, text, specials)
        ids += piece
        is_response += [response] * len(piece)
    return ids, is_response


def encode_chat(
    tokenizer: TokenizerLike,
    template: str,
    messages: Sequence[dict[str, str]],
    add_generation_prompt: bool = False,
) -> tuple[list[int], list[bool]]:
    """Token ids of the templated chat and, per id, whether it belongs to an answer.

    Each piece of ``chat_segments`` is encoded on its own, so a prompt encodes to the same ids
    in training and at generation (``add_generation_prompt=True``); ``bos_token`` and
    ``eos_token`` are the tokenizer's pieces and become its control ids. Renders in this
    process, unbounded: for a template you did not write, use ``finetune.rendering``."""
    variables = chat_variables(tokenizer)
    return encode_segments(
        tokenizer, chat_segments(template, messages, add_generation_prompt, **variables)
    )


__all__ = [
    "DEFAULT_TEMPLATE",
    "ROLES",
    "TEMPLATE_FILE",
    "chat_segments",
    "chat_variables",
    "encode_chat",
    "encode_segments",
    "encode_text",
    "find_template",
    "load_template",
    "render",
    "save_template",
]
