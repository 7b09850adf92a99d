"""Fixtures for the engine and server tests: stories260K and a live server on a free
loopback port (the models come from serve_support.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from serve_support import load_stories

import pasture
from pasture.model import Transformer


@pytest.fixture
def stories(shared_data: Path) -> tuple[Transformer, pasture.Tokenizer]:
    return load_stories(shared_data)


@pytest.fixture(scope="module")
def server(shared_data: Path) -> Iterator[object]:
    """stories260K served by uvicorn on 127.0.0.1 (module-wide: one engine thread)."""
    from pasture.serve import ServerThread, build_app

    model, tokenizer = load_stories(shared_data)
    app = build_app(model, tokenizer, "stories260K", max_batch=8, prefill_chunk=64)
    with ServerThread(app) as running:
        running.app, running.tokenizer = app, tokenizer
        yield running
