"""Writing a checkpoint never removes what Pasture did not write (issue 9, "must never happen").

`convert`, `init` and `export` refuse a non-empty destination that is not a Pasture checkpoint
of the same format unless `--force`; even then only the format's own files are replaced.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import cli_error

from pasture import interop
from pasture.cli import main
from pasture.data.tokenizer import Tokenizer
from pasture.errors import PastureError
from pasture.interop import Checkpoint
from pasture.model import ModelArgs, Transformer


def _checkpoint(tokenizer=None, vocab_size: int = 48) -> Checkpoint:
    args = ModelArgs(
        dim=32, n_layers=1, n_heads=4, vocab_size=vocab_size, hidden_dim=40, norm_eps=1e-5
    )
    model = Transformer(args)
    model.init_weights(seed=0)
    return Checkpoint.from_model(model, tokenizer)


@pytest.fixture
def src(tmp_path: Path) -> Path:
    """A llama2.c source checkpoint (one file, so a folder destination holds only outputs)."""
    interop.save(_checkpoint(), tmp_path / "src.bin", "llama2c")
    return tmp_path / "src.bin"


def _user_folder(folder: Path) -> dict[str, bytes]:
    """A folder of a user's own files, including a sub-folder; returns what it holds."""
    (folder / "notes").mkdir(parents=True)
    (folder / "notes" / "todo.txt").write_text("keep me\n")
    (folder / "thesis.tex").write_text("\\documentclass{article}\n")
    (folder / "README.md").write_text("# mine\n")
    return _snapshot(folder)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.mark.parametrize("fmt", ["hf", "meta"])
def test_convert_refuses_a_folder_of_user_files(
    tmp_path: Path, src: Path, fmt: str, capsys
) -> None:
    dst = tmp_path / "dst"
    before = _user_folder(dst)
    cli_error(["convert", str(src), str(dst), "--to", fmt], capsys, str(dst), "--force")
    assert _snapshot(dst) == before

    # --force writes the format's files beside the user's, which all survive.
    assert main(["convert", str(src), str(dst), "--to", fmt, "--force"]) == 0
    after = _snapshot(dst)
    assert {k: after[k] for k in before} == before
    assert interop.load(dst).format == fmt


@pytest.mark.slow
def test_convert_into_the_working_directory(tmp_path: Path, src: Path) -> None:
    work = tmp_path / "work"
    before = _user_folder(work)

    def convert(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "pasture.cli", "convert", str(src), ".", "--to", "hf", *extra],
            cwd=work,
            capture_output=True,
            text=True,
        )

    proc = convert()
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("pasture: error: .: not empty")
    assert _snapshot(work) == before and work.is_dir()

    assert convert("--force").returncode == 0
    after = _snapshot(work)
    assert {k: after[k] for k in before} == before
    assert set(after) - set(before) == {"config.json", "model.safetensors"}
    assert interop.load(work).format == "hf"


def test_rewriting_own_checkpoint_replaces_only_format_files(
    tmp_path: Path, src: Path, shared_data: Path
) -> None:
    tokenizer = Tokenizer.from_file(shared_data / "models" / "stories260K" / "tok512.model")
    hf = tmp_path / "hf"
    interop.save(_checkpoint(tokenizer, 512), hf, "hf")
    assert (hf / "tokenizer.model").is_file()
    # What a killed write or another writer may leave: a temporary, a stale shard index.
    (hf / ".config.json.k2j4_x9q.tmp").write_text("{")
    (hf / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    (hf / "model-00001-of-00002.safetensors").write_bytes(b"stale")

    # A Pasture checkpoint of the same format is replaced without --force; files this write
    # doesn't produce (the old tokenizer, the stale shards) would be read with it: removed.
    interop.save(interop.load(src), hf, "hf")
    assert sorted(p.name for p in hf.iterdir()) == ["config.json", "model.safetensors"]
    assert interop.load(hf).args.vocab_size == 48

    meta = tmp_path / "meta"
    interop.save(interop.load(src), meta, "meta", shards=2)
    interop.save(interop.load(src), meta, "meta")
    assert sorted(p.name for p in meta.iterdir()) == ["consolidated.00.pth", "params.json"]


def test_other_format_in_destination_is_refused(tmp_path: Path, src: Path, capsys) -> None:
    interop.save(interop.load(src), tmp_path / "hf", "hf")
    before = _snapshot(tmp_path / "hf")
    cli_error(
        ["convert", str(src), str(tmp_path / "hf"), "--to", "meta"],
        capsys,
        "'config.json', which Pasture does not write for Meta",
    )
    assert _snapshot(tmp_path / "hf") == before
    # A folder of only owned names but no valid marker is not a checkpoint either.
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.model").write_bytes(b"user's tokenizer")
    cli_error(["convert", str(src), str(tmp_path / "tok"), "--to", "meta"], capsys, "params.json")
    assert (tmp_path / "tok" / "tokenizer.model").read_bytes() == b"user's tokenizer"
    # An empty folder is fine.
    (tmp_path / "empty").mkdir()
    assert main(["convert", str(src), str(tmp_path / "empty"), "--to", "meta"]) == 0


def test_folder_format_never_replaces_a_file(tmp_path: Path, src: Path, capsys) -> None:
    (tmp_path / "out").write_text("a user's file")
    for force in ([], ["--force"]):
        cli_error(
            ["convert", str(src), str(tmp_path / "out"), "--to", "hf", *force],
            capsys,
            "not a folder",
        )
    assert (tmp_path / "out").read_text() == "a user's file"


@pytest.mark.parametrize("fmt,name", [("llama2c", "out.bin"), ("gguf", "out.gguf")])
def test_file_formats_refuse_other_files(
    tmp_path: Path, src: Path, fmt: str, name: str, capsys
) -> None:
    dst = tmp_path / name
    dst.write_text("a user's file")
    cli_error(["convert", str(src), str(dst), "--to", fmt], capsys, str(dst), "--force")
    assert dst.read_text() == "a user's file"
    assert main(["convert", str(src), str(dst), "--to", fmt]) != 0  # still refused
    capsys.readouterr()
    assert main(["convert", str(src), str(dst), "--to", fmt, "--force"]) == 0
    assert interop.load(dst).format == fmt
    # Now it is a checkpoint of this format: replacing it needs no --force.
    assert main(["convert", str(src), str(dst), "--to", fmt]) == 0
    capsys.readouterr()
    # A folder is never replaced by a file, even with --force.
    (tmp_path / "dir.bin").mkdir()
    (tmp_path / "dir.bin" / "keep.txt").write_text("keep")
    cli_error(
        ["convert", str(src), str(tmp_path / "dir.bin"), "--to", fmt, "--force"],
        capsys,
        "is a folder",
    )
    assert (tmp_path / "dir.bin" / "keep.txt").read_text() == "keep"


def test_llama2c_tokenizer_beside_it(tmp_path: Path, src: Path, shared_data: Path, capsys) -> None:
    # llama2.c's tokenizer travels as NAME.model: a file there that is no tokenizer is kept.
    (tmp_path / "out.model").write_text("not a tokenizer")
    to_llama2c = ["convert", str(src), "--to", "llama2c"]
    cli_error([*to_llama2c, str(tmp_path / "out.bin")], capsys, "out.model")
    assert not (tmp_path / "out.bin").exists()
    assert (tmp_path / "out.model").read_text() == "not a tokenizer"
    cli_error([*to_llama2c, str(tmp_path / "x.model")], capsys, "collide")

    # Replacing a llama2.c checkpoint without a tokenizer removes the old one's tokenizer,
    # which would otherwise be read as the new model's.
    tokenizer = Tokenizer.from_file(shared_data / "models" / "stories260K" / "tok512.model")
    with_tok = _checkpoint(tokenizer, 512)
    interop.save(with_tok, tmp_path / "m.bin", "llama2c")
    assert (tmp_path / "m.model").is_file()
    interop.save(interop.load(src), tmp_path / "m.bin", "llama2c")
    assert not (tmp_path / "m.model").exists()
    assert interop.load(tmp_path / "m.bin").tokenizer is None


def test_init_and_export_check_before_any_work(tmp_path: Path, capsys) -> None:
    dst = tmp_path / "dst"
    before = _user_folder(dst)
    cli_error(["init", "debug", str(dst), "--to", "hf"], capsys, str(dst), "--force")
    # export checks the destination before reading the run (here there is none).
    cli_error(["export", str(tmp_path / "no-run"), str(dst), "--to", "meta"], capsys, str(dst))
    assert _snapshot(dst) == before
    assert main(["init", "debug", str(dst), "--to", "hf", "--force"]) == 0
    assert {k: v for k, v in _snapshot(dst).items() if k in before} == before


def test_failed_write_into_existing_folder_changes_nothing(tmp_path: Path, src: Path) -> None:
    dst = tmp_path / "dst"
    before = _user_folder(dst)
    # 3 shards cannot split dim 32: the write fails before anything is renamed into place.
    with pytest.raises(PastureError, match="cannot split"):
        interop.save(interop.load(src), dst, "meta", shards=3, force=True)
    assert _snapshot(dst) == before
    assert sorted(os.listdir(dst)) == sorted(["notes", "thesis.tex", "README.md"])
