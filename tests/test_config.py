"""Typed TOML configs: unknown keys and wrong types fail before anything starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from pasture.config import build, load_toml, to_dict
from pasture.errors import PastureError


@dataclass
class Inner:
    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    path: Path | None = None
    optim: Inner = field(default_factory=Inner)
    weights: dict[str, float] = field(default_factory=dict)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_build_and_overrides(tmp_path: Path) -> None:
    path = _toml(tmp_path, 'name = "a"\nsteps = 5\n[optim]\nlr = 1\n[weights]\nc4 = 0.5\n')
    cfg = build(Outer, load_toml(path, ["optim.betas=[0.8, 0.9]", "path=/tmp/x", "steps=7"]))
    assert cfg == Outer("a", 7, Path("/tmp/x"), Inner(1.0, [0.8, 0.9]), {"c4": 0.5})
    assert to_dict(cfg)["path"] == "/tmp/x"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stepz = 3", "c.toml: unknown key 'stepz'"),
        ("[optim]\nbeta = 1", "c.toml.optim: unknown key 'beta'"),
        ('steps = "ten"', "c.toml.steps: expected int, got 'ten'"),
        ("steps = true", "c.toml.steps: expected int, got True"),
        ("[optim]\nbetas = 0.9", "c.toml.optim.betas: expected a list"),
        ("optim = 3", "c.toml.optim: expected a table"),
        ("steps = = 3", "c.toml: not valid TOML"),
    ],
)
def test_bad_configs_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = _toml(tmp_path, text)
    with pytest.raises(PastureError) as error:
        build(Outer, load_toml(path), str(path))
    assert message.replace("c.toml", str(path)) in str(error.value)


def test_missing_file_and_bad_override(tmp_path: Path) -> None:
    with pytest.raises(PastureError, match="no such config file"):
        load_toml(tmp_path / "nope.toml")
    with pytest.raises(PastureError, match="expected key.sub=value"):
        load_toml(_toml(tmp_path, ""), ["steps"])
