"""Typed configs from TOML: dataclasses all the way down, unknown keys and wrong types are
errors that name the key. A leaf module: it imports nothing from Pasture but ``errors``.

    cfg = build(BuildConfig, load_toml("configs/data/llama.toml", ["seq_len=4096"]))
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from .errors import PastureError

T = TypeVar("T")

DATA_ENV = "PASTURE_DATA"  # the shared data folder: eval/, models/, raw samples


def data_root(default: Path | None = None) -> Path | None:
    """The shared data folder: ``$PASTURE_DATA`` if set (and not empty), else ``default``. The
    one place that reads the variable (``pasture eval``, benchmarks during training, the demo)."""
    root = os.environ.get(DATA_ENV, "")
    return Path(root) if root else default


def load_toml(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Read a TOML file (None: start empty) and apply ``key.sub=value`` overrides (values
    parsed as TOML, else taken as strings)."""
    try:
        data = tomllib.loads(Path(path).read_text()) if path is not None else {}
    except FileNotFoundError:
        raise PastureError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise PastureError(f"{path}: a folder, not a config file") from None
    except OSError as e:
        raise PastureError(f"{path}: cannot read ({e.strerror or e})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PastureError(f"{path}: not valid TOML ({e})") from None
    except RecursionError:  # tomllib recurses per nesting level
        raise PastureError(f"{path}: not a config (tables or arrays nested too deeply)") from None
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise PastureError(f"override {item!r}: expected key.sub=value")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare string such as a path
        except RecursionError:
            raise PastureError(f"override {key}: value nested too deeply") from None
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise PastureError(f"override {item!r}: {part} is not a table")
        node[leaf] = value
    return data


def build(cls: type[T], data: Any, where: str = "config") -> T:
    """An instance of dataclass ``cls`` from plain data, checking keys and types."""
    if not isinstance(data, dict):
        raise PastureError(f"{where}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise PastureError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(fields)})")
    values = {name: _convert(hints[name], value, f"{where}.{name}") for name, value in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        raise PastureError(f"{where}: {e}") from None


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, where)
            except PastureError as e:
                errors.append(str(e))
        raise PastureError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            raise PastureError(f"{where}: expected a list, got {value!r}")
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        items = typing.get_args(hint)
        if not isinstance(value, list | tuple) or (
            items and items[-1] is not Ellipsis and len(value) != len(items)
        ):
            raise PastureError(f"{where}: expected {len(items)} values, got {value!r}")
        kinds = [items[0]] * len(value) if items and items[-1] is Ellipsis else list(items)
        return tuple(
            _convert(k, v, f"{where}[{i}]")
            for i, (k, v) in enumerate(zip(kinds, value, strict=True))
        )
    if origin is dict:
        key_type, item = typing.get_args(hint) or (str, Any)
        if not isinstance(value, dict):
            raise PastureError(f"{where}: expected a table, got {value!r}")
        return {k: _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    if (
        isinstance(hint, type)
        and not isinstance(value, hint)
        or (hint in (int, float) and isinstance(value, bool))
    ):
        raise PastureError(f"{where}: expected {hint.__name__}, got {value!r}")
    return value


def to_dict(obj: Any) -> Any:
    """Plain data (for writing the resolved config next to the outputs)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj
