"""The CLI: each user error is one line naming the file and the problem, exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pasture import interop
from pasture.cli import main
from pasture.interop import Checkpoint
from pasture.model import Transformer, preset


def _run(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _assert_error(argv, capsys, *fragments: str) -> str:
    code, _, err = _run(argv, capsys)
    assert code == 2, err
    assert err.startswith("pasture: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)
    return err


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    model = Transformer(preset("debug", vocab_size=512))
    model.init_weights(seed=0)
    interop.save(Checkpoint.from_model(model), tmp_path / "hf", "hf")
    return tmp_path / "hf"


def test_info_preset(capsys) -> None:
    code, out, _ = _run(["info", "7B", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["parameters"] == 6_738_415_616
    assert info["config"]["ffn_hidden_dim"] == 11008


def test_info_checkpoint(shared_data: Path, capsys) -> None:
    gguf = shared_data / "models" / "llama-2-tiny-random-gguf" / "llama-2-tiny-random.gguf"
    code, out, _ = _run(["info", str(gguf)], capsys)
    assert code == 0 and "format      gguf" in out and "32000 pieces" in out


def test_missing_file(tmp_path: Path, capsys) -> None:
    _assert_error(["info", str(tmp_path / "nope")], capsys, "nope", "no such file")


def test_unknown_preset(tmp_path: Path, capsys) -> None:
    _assert_error(["init", "70B", str(tmp_path / "x")], capsys, "unknown preset '70B'")


def test_unknown_format(tmp_path: Path, hf_dir: Path, capsys) -> None:
    _assert_error(  # a usage error is one line too
        ["convert", str(hf_dir), str(tmp_path / "x"), "--to", "onnx"],
        capsys,
        "pasture convert: argument --to: invalid choice: 'onnx'",
    )
    _assert_error(["convert", str(hf_dir), str(tmp_path / "x.pt")], capsys, "x.pt", "--to")
    (tmp_path / "junk.bin").write_bytes(b"\x00" * 10)
    _assert_error(["info", str(tmp_path / "junk.bin")], capsys, "junk.bin", "unrecognized")


def test_truncated_checkpoints(tmp_path: Path, hf_dir: Path, shared_data: Path, capsys) -> None:
    weights = hf_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    _assert_error(["info", str(hf_dir)], capsys, "model.safetensors", "truncated or corrupt")

    interop.save(
        interop.load(shared_data / "models" / "stories260K" / "stories260K.bin"),
        tmp_path / "meta",
        "meta",
    )
    pth = tmp_path / "meta" / "consolidated.00.pth"
    pth.write_bytes(pth.read_bytes()[:5000])
    _assert_error(["info", str(tmp_path / "meta")], capsys, "consolidated.00.pth", "corrupt")

    for name, src in [
        ("s.bin", "stories260K/stories260K.bin"),
        ("t.gguf", "llama-2-tiny-random-gguf/llama-2-tiny-random.gguf"),
    ]:
        data = (shared_data / "models" / src).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        _assert_error(["info", str(tmp_path / name)], capsys, name, "truncated")


def test_shape_mismatch(hf_dir: Path, capsys) -> None:
    config = json.loads((hf_dir / "config.json").read_text())
    config["intermediate_size"] += 8
    (hf_dir / "config.json").write_text(json.dumps(config))
    _assert_error(["info", str(hf_dir)], capsys, str(hf_dir), "feed_forward.w1", "shape")


def test_unknown_params_key(tmp_path: Path, hf_dir: Path, capsys) -> None:
    assert _run(["convert", str(hf_dir), str(tmp_path / "meta"), "--to", "meta"], capsys)[0] == 0
    params = json.loads((tmp_path / "meta" / "params.json").read_text())
    (tmp_path / "meta" / "params.json").write_text(json.dumps({**params, "n_experts": 8}))
    _assert_error(["info", str(tmp_path / "meta")], capsys, "params.json", "'n_experts'")


def test_tokenizer_vocab_mismatch(shared_data: Path, capsys) -> None:
    models = shared_data / "models"
    _assert_error(
        [
            "generate",
            "--checkpoint",
            str(models / "stories260K" / "stories260K.bin"),
            "--tokenizer",
            str(models / "llama-tokenizer" / "tokenizer.model"),
            "--prompt",
            "Hi",
        ],
        capsys,
        "32000 tokens",
        "vocab is 512",
    )


def test_generate_needs_a_tokenizer(hf_dir: Path, capsys) -> None:
    _assert_error(
        ["generate", "--checkpoint", str(hf_dir), "--prompt", "x"],
        capsys,
        str(hf_dir),
        "--tokenizer",
    )


def test_failed_conversion_leaves_nothing(tmp_path: Path, hf_dir: Path, capsys) -> None:
    outs = tmp_path / "outs"
    outs.mkdir()
    # debug has dim 128: 3 shards cannot divide it, so the write fails midway.
    argv = ["convert", str(hf_dir), str(outs / "meta"), "--to", "meta", "--shards", "3"]
    _assert_error(argv, capsys, str(outs / "meta"), "cannot split")
    assert list(outs.iterdir()) == []
    # An existing output survives a failed overwrite unchanged.
    assert _run(["convert", str(hf_dir), str(outs / "meta"), "--to", "meta"], capsys)[0] == 0
    before = {p.name: p.read_bytes() for p in (outs / "meta").iterdir()}
    _assert_error(argv, capsys, "cannot split")
    assert {p.name: p.read_bytes() for p in (outs / "meta").iterdir()} == before
    assert [p.name for p in outs.iterdir()] == ["meta"]


def test_real_process_exit_status(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pasture.cli", "info", str(tmp_path / "x")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr == f"pasture: error: {tmp_path / 'x'}: no such file or directory\n"


def test_tokenizer_commands(tmp_path: Path, shared_data: Path, capsys) -> None:
    import sentencepiece as spm

    corpus = tmp_path / "corpus.txt"
    corpus.write_text((shared_data / "models" / "MANIFEST.md").read_text() * 3)
    model = tmp_path / "tok.model"
    code, _, _ = _run(
        ["tokenizer", "train", "--input", str(corpus), "--out", str(model), "--vocab-size", "400"],
        capsys,
    )
    assert code == 0 and model.is_file()
    code, out, _ = _run(
        ["tokenizer", "encode", "--tokenizer", str(model), "--bos", "run 12345 steps"], capsys
    )
    ids = [int(i) for i in out.split()]
    assert ids == [1] + spm.SentencePieceProcessor(model_file=str(model)).encode("run 12345 steps")
    code, out, _ = _run(["tokenizer", "decode", "--tokenizer", str(model), *map(str, ids)], capsys)
    assert out == "run 12345 steps\n"
    _assert_error(
        ["tokenizer", "decode", "--tokenizer", str(model), "5", "99999"],
        capsys,
        "id 99999 outside 0..399",
    )
    _assert_error(
        ["tokenizer", "train", "--input", str(tmp_path / "none.txt"), "--out", str(model)],
        capsys,
        "none.txt",
        "no such file",
    )


def test_carbon_subcommand(capsys) -> None:
    code, out, _ = _run(["carbon", "--gpu-hours", "82432", "--power", "400", "--json"], capsys)
    assert code == 0 and round(json.loads(out)["tco2eq"]) == 14  # LLaMA-7B, Table 15
    _assert_error(["carbon", "--gpu-hours", "-1", "--power", "400"], capsys, "GPU-hours -1.0")
