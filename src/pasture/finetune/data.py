"""Instruction data: JSONL files in the common shapes, each read as a chat (``messages``).

One shape per file, taken from its first record; every line must have it:

    alpaca      {"instruction", "input"?, "output"}       Alpaca; Dolly's own keys
                {"instruction", "context"?, "response"}   are read the same way
    chat        {"messages": [{"role", "content"}, ...]}  roles system, user, assistant
    completion  {"prompt", "completion"}

Other keys (``category``, ``id`` …) are ignored. A problem is one ``PastureError`` naming
``file:line``. Alpaca's instruction and input become one user message (separated by a blank
line, as Alpaca's own prompt does); a prompt/completion pair is one user and one assistant
message, so every shape goes through the same chat template (``finetune.template``).

    examples = read_examples("data/alpaca.jsonl")         # [Example(messages, where), ...]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PastureError
from .template import ROLES

FORMATS = ("alpaca", "chat", "completion")


@dataclass(frozen=True)
class Example:
    messages: list[dict[str, str]]
    where: str  # "file:line", for messages about this example


def detect_format(record: dict[str, Any]) -> str | None:
    """The shape of one record (None when it has none of them)."""
    if "messages" in record:
        return "chat"
    if "instruction" in record and ("output" in record or "response" in record):
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "completion"
    return None


def _text(record: dict[str, Any], key: str, where: str, optional: bool = False) -> str:
    value = record.get(key)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        got = "missing" if key not in record else f"a {type(value).__name__}"
        raise PastureError(f"{where}: {key!r} must be a string ({got})")
    return value


def to_messages(record: dict[str, Any], fmt: str, where: str) -> list[dict[str, str]]:
    """The chat that one record of shape ``fmt`` stands for."""
    if fmt == "alpaca":
        answer_key = "output" if "output" in record else "response"
        context_key = "input" if "input" in record else "context"
        instruction = _text(record, "instruction", where)
        context = _text(record, context_key, where, optional=True)
        user = f"{instruction}\n\n{context}" if context else instruction
        return [
            {"role": "user", "content": user},
            {"role": "assistant", "content": _text(record, answer_key, where)},
        ]
    if fmt == "completion":
        return [
            {"role": "user", "content": _text(record, "prompt", where)},
            {"role": "assistant", "content": _text(record, "completion", where)},
        ]
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise PastureError(f"{where}: 'messages' must be a non-empty list of {{role, content}}")
    chat = []
    for i, message in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(message, dict):
            raise PastureError(f"{at} must be an object with role and content")
        role = message.get("role")
        if role not in ROLES:
            raise PastureError(f"{at}: role {role!r} is not one of {', '.join(ROLES)}")
        chat.append({"role": role, "content": _text(message, "content", at)})
    if not any(m["role"] == "assistant" for m in chat):
        raise PastureError(f"{where}: no assistant message (nothing to learn from)")
    return chat


def read_examples(path: str | Path) -> list[Example]:
    """Every example of one JSONL file (blank lines skipped), its shape detected once."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PastureError(f"{path}: no such data file") from None
    except IsADirectoryError:
        raise PastureError(f"{path}: a folder, not a JSONL file") from None
    except UnicodeDecodeError as e:
        raise PastureError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise PastureError(f"{path}: cannot read ({e.strerror or e})") from None
    fmt: str | None = None
    examples = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise PastureError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
        except RecursionError:
            raise PastureError(f"{where}: JSON nested too deeply") from None
        if not isinstance(record, dict):
            raise PastureError(f"{where}: expected a JSON object, got {type(record).__name__}")
        found = detect_format(record)
        if found is None:
            raise PastureError(
                f"{where}: not an instruction record: expected keys instruction+output, "
                f"messages, or prompt+completion (got {', '.join(sorted(record)) or 'none'})"
            )
        if fmt is None:
            fmt = found
        elif found != fmt:
            raise PastureError(
                f"{where}: a {found} record, but this file is {fmt} (one shape per file)"
            )
        examples.append(Example(to_messages(record, fmt, where), where))
    if not examples:
        raise PastureError(f"{path}: no examples (the file is empty)")
    return examples


def file_format(path: str | Path) -> str:
    """The shape of a JSONL file (the first record's; ``read_examples`` checks the rest)."""
    path = Path(path)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise PastureError(f"{path}:{number}: not JSON ({e.msg})") from None
            found = detect_format(record) if isinstance(record, dict) else None
            if found is None:
                raise PastureError(f"{path}:{number}: not an instruction record")
            return found
    raise PastureError(f"{path}: no examples (the file is empty)")


__all__ = ["FORMATS", "Example", "detect_format", "file_format", "read_examples", "to_messages"]
