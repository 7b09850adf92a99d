"""Shared test fixtures. The real data lives in ../shared/data (override: $PASTURE_DATA); tests
fail, never skip, when it is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


def shared_data_path() -> Path:
    path = Path(os.environ.get("PASTURE_DATA", REPO.parent / "shared" / "data"))
    assert path.is_dir(), f"shared data missing at {path}: set PASTURE_DATA to ../shared/data"
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return shared_data_path()
