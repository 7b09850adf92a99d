"""Typed TOML configs: unknown keys and wrong types fail before anything starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_support import cli_error

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


# --- `pasture train`'s config: every bad value is one line and exit 2, before any work ---------

TRAIN_DEBUG = Path(__file__).resolve().parents[1] / "configs" / "train" / "debug.toml"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optim.grad_clip=-1", "optim.grad_clip = -1.0: must be a finite number above 0"),
        ("batch_tokens=0", "batch_tokens = 0: must be 1 or more"),
        ("optim.lr=-1", "optim.lr = -1.0: must be a finite number above 0"),
        ("optim.lr=nan", "optim.lr = nan: must be a finite number above 0"),
        ("optim.weight_decay=nan", "optim.weight_decay = nan: must be finite, >= 0"),
        ("micro_batch=0", "micro_batch = 0: must be 1 or more"),
        ("data.seq_len=0", "data.seq_len = 0: must be 1 or more"),
        ("checkpoint.every=0", "checkpoint.every = 0: must be 1 or more"),
        ("checkpoint_every=0", "checkpoint.every = 0: must be 1 or more"),  # the old spelling
        ("metrics.log_every=0", "metrics.log_every = 0: must be 1 or more"),
        ("carbon.pue=0.5", "carbon.pue = 0.5: must be a finite number 1.0 or more"),
        ("carbon.power_watts=0", "carbon.power_watts = 0.0: must be a finite number above 0"),
        ("benchmarks.batch_size=0", "benchmarks.batch_size = 0: must be 1 or more"),
        ("device=tpu:7", "device = 'tpu:7': use cpu, cuda or cuda:N"),
        ("model.max_seq_len=1e10", "model.max_seq_len: expected int, got 10000000000.0"),
        ("model.max_seq_len=10000000000", "max_seq_len must be in 1..16,777,216"),
        ("model.preset=65B", "model.preset 65B: its weights, gradients and AdamW state need"),
        ("data.seq_len=200", "batch_tokens 4096 is not a multiple of micro_batch × seq_len"),
        ("nosuchkey=1", "debug.toml: unknown key 'nosuchkey'"),  # the packaged default config
    ],
)
def test_bad_train_settings_fail_in_one_line_before_any_work(
    override: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    cli_error(["train", f"--set=run_dir={run}", f"--set={override}"], capsys, message)
    assert not run.exists()  # nothing written


def test_the_default_train_config_is_the_debug_config() -> None:
    from pasture import cli

    packaged = Path(cli.__file__).with_name("train") / "debug.toml"
    assert packaged.read_text() == TRAIN_DEBUG.read_text()
    assert load_toml(packaged)["steps"] > load_toml(packaged)["optim"]["warmup_steps"]


def test_config_files_that_are_not_configs(tmp_path: Path) -> None:
    with pytest.raises(PastureError, match="a folder, not a config file"):
        load_toml(tmp_path)
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(PastureError, match="nested too deeply"):
        load_toml(deep)
    with pytest.raises(PastureError, match="nested too deeply"):
        load_toml(None, ["x=" + "[" * 100_000])


def test_keys_that_moved_into_their_modules_tables_still_load(tmp_path: Path) -> None:
    from pasture.train.config import TrainConfig, load_train_config

    old = load_train_config(None, ["checkpoint_every=7", "keep_checkpoints=0", "log_every=3"])
    new = load_train_config(
        None, ["checkpoint.every=7", "checkpoint.keep=0", "metrics.log_every=3"]
    )
    assert old == new != TrainConfig()
    assert load_train_config(TRAIN_DEBUG, ["checkpoint_every=9"]).checkpoint.every == 9
    both = _toml(tmp_path, "pue = 1.2\n[carbon]\npue = 1.3\n")
    with pytest.raises(PastureError, match="pue and carbon.pue are one setting: keep one"):
        load_train_config(both)


def test_pasture_data_is_read_in_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    from pasture import cli, demo
    from pasture.config import data_root

    monkeypatch.setenv("PASTURE_DATA", "/somewhere/data")
    assert data_root() == Path("/somewhere/data")
    assert cli._default_eval_dir() == str(Path("/somewhere/data/eval"))
    assert demo.default_data_dir() == Path("/somewhere/data")
    monkeypatch.setenv("PASTURE_DATA", "")  # set but empty: as if unset
    assert data_root() is None and cli._default_eval_dir() is None
    assert demo.default_data_dir() == Path.cwd().parent / "shared" / "data"


@pytest.mark.parametrize(
    "path", sorted((TRAIN_DEBUG.parent.parent / "train").glob("*.toml")), ids=lambda p: p.name
)
def test_every_shipped_train_config_loads_in_the_new_tables(path: Path) -> None:
    from pasture.train.config import MOVED, load_train_config

    assert not set(load_toml(path)) & set(MOVED)  # shipped configs use the tables
    cfg = load_train_config(path)
    assert cfg.checkpoint.every >= 1 and cfg.model.args().max_seq_len >= cfg.data.seq_len
