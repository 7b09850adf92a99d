"""Hostile and broken checkpoint files: one line naming the file, exit 2, bounded memory and time.

Each file is tiny and built here; a header that *claims* huge shapes is enough (issue 9, "tiny
checkpoint files that exhaust memory"). Every case must fail fast: before the fixes, several of
these allocated without bound or hung.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_support import cli_error
from safetensors.torch import save_file

from pasture import interop
from pasture.cli import main
from pasture.errors import PastureError
from pasture.generate import generate_tokens
from pasture.interop import Checkpoint
from pasture.model import ModelArgs, Transformer

TINY = ModelArgs(dim=8, n_layers=1, n_heads=2, vocab_size=16, hidden_dim=8, norm_eps=1e-5)


def _tiny(args: ModelArgs = TINY) -> Checkpoint:
    model = Transformer(args)
    model.init_weights(seed=0)
    return Checkpoint.from_model(model)


def _refused(path: Path, *fragments: str, seconds: float = 5.0) -> str:
    """``interop.load(path)`` raises one line naming the file, fast."""
    start = time.perf_counter()
    with pytest.raises(PastureError) as info:
        interop.load(path)
    message = str(info.value)
    assert time.perf_counter() - start < seconds, message
    assert "\n" not in message and str(path) in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# llama2.c


def test_llama2c_header_claiming_2_billion_layers(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "huge.bin"
    bad.write_bytes(struct.pack("<7i", 64, 128, 2**31 - 1, 4, 4, 32, 16))  # 28 bytes
    cli_error(["info", str(bad)], capsys, "huge.bin", "unrecognized")  # not a plausible header
    from pasture.interop import llama2c

    with pytest.raises(PastureError, match="truncated: 28 bytes"):
        llama2c.read_header(bad)


def test_llama2c_v1_header_claiming_a_huge_context(tmp_path: Path) -> None:
    path = tmp_path / "long.bin"
    interop.save(_tiny(), path, "llama2c")
    data = bytearray(path.read_bytes())
    struct.pack_into("<i", data, 8 + 6 * 4, 2**31 - 1)  # seq_len (not part of v1's file size)
    path.write_bytes(bytes(data))
    _refused(path, "header seq_len must be in 1..16,777,216")


# Meta params.json


def _meta(tmp_path: Path, **params: object) -> Path:
    folder = tmp_path / "meta"
    interop.save(_tiny(), folder, "meta", force=True)
    current = json.loads((folder / "params.json").read_text())
    (folder / "params.json").write_text(json.dumps({**current, **params}))
    return folder


@pytest.mark.parametrize(
    "params,fragment",
    [
        ({"n_layers": 10**9}, "n_layers must be in 1..4,096, got 1,000,000,000"),
        ({"n_layers": 4000}, "n_layers=4,000, but the checkpoint holds only 12 tensors"),
        ({"n_heads": 0}, "n_heads must be in 1..4,096, got 0"),
        ({"multiple_of": 0}, "multiple_of must be in 1..65,536, got 0"),
        ({"dim": "64"}, "dim must be an integer, got '64'"),
        ({"dim": 64.5}, "dim must be an integer, got 64.5"),
        ({"norm_eps": float("nan")}, "norm_eps must be a finite number above 0, got nan"),
        ({"rope_theta": -1}, "rope_theta must be a finite number above 0"),
        ({"vocab_size": "all"}, "vocab_size must be an integer"),
        ({"ffn_dim_multiplier": 1e300}, "hidden_dim"),
    ],
)
def test_meta_params(tmp_path: Path, params: dict, fragment: str) -> None:
    folder = _meta(tmp_path, **params)
    _refused(folder / "params.json" if "n_layers" not in params else folder, fragment)


def test_meta_params_not_an_object(tmp_path: Path, capsys) -> None:
    folder = _meta(tmp_path)
    (folder / "params.json").write_text("[1, 2]")
    cli_error(["info", str(folder)], capsys, "params.json", "JSON object")


def test_meta_mismatched_shards(tmp_path: Path) -> None:
    two = tmp_path / "two"
    interop.save(_tiny(), two, "meta", shards=2)
    other = torch.load(two / "consolidated.01.pth", weights_only=True)
    other.pop("norm.weight")
    torch.save(other, two / "consolidated.01.pth")
    _refused(two, "consolidated.01.pth", "holds other tensors", "norm.weight")

    other = torch.load(two / "consolidated.00.pth", weights_only=True)
    other["layers.0.attention.wq.weight"] = torch.zeros(4, 3)  # cannot join the (4, 8) half
    torch.save(other, two / "consolidated.01.pth")
    _refused(two, "consolidated.01.pth", "does not join")


def test_meta_shard_that_is_a_malicious_pickle(tmp_path: Path) -> None:
    folder = _meta(tmp_path)
    marker = tmp_path / "pwned"
    _write_malicious_pickle(folder / "consolidated.00.pth", marker)
    _refused(folder, "consolidated.00.pth")
    assert not marker.exists()


# Hugging Face config.json, index and weights


def _hf(tmp_path: Path, **changes: object) -> Path:
    folder = tmp_path / "hf"
    interop.save(_tiny(), folder, "hf", force=True)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return folder


@pytest.mark.parametrize(
    "changes,fragment",
    [
        ({"num_hidden_layers": 10**9}, "num_hidden_layers must be in 1..4,096"),
        ({"num_hidden_layers": 3000}, "n_layers=3,000, but the checkpoint holds only 12"),
        ({"num_attention_heads": 0}, "num_attention_heads must be in 1..4,096, got 0"),
        ({"hidden_size": "8"}, "hidden_size must be an integer, got '8'"),
        ({"intermediate_size": [8]}, "intermediate_size must be an integer"),
        ({"vocab_size": -16}, "vocab_size must be in 1..16,777,216, got -16"),
        ({"rms_norm_eps": float("nan")}, "rms_norm_eps must be a finite number above 0"),
        ({"max_position_embeddings": 10**12}, "max_position_embeddings must be in 1..16,777,216"),
        ({"num_key_value_heads": 0}, "num_key_value_heads must be in 1..4,096, got 0"),
        ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be true/false"),
        ({"head_dim": 3}, "head_dim 3"),
        ({"rope_scaling": "linear"}, "rope_scaling must be a JSON object"),
    ],
)
def test_hf_config(tmp_path: Path, changes: dict, fragment: str) -> None:
    folder = _hf(tmp_path, **changes)
    _refused(folder, fragment)


def test_hf_config_not_an_object(tmp_path: Path, capsys) -> None:
    folder = _hf(tmp_path)
    (folder / "config.json").write_text("[1, 2, 3]")
    cli_error(["info", str(folder)], capsys, "config.json", "must hold a JSON object, not list")
    (folder / "config.json").write_text("[" * 100_000)
    cli_error(["info", str(folder)], capsys, "config.json", "unreadable")


@pytest.mark.parametrize(
    "index,fragment",
    [
        ("{not json", "unreadable"),
        ('{"metadata": {}}', 'no "weight_map"'),
        ("[]", 'no "weight_map"'),
        ('{"weight_map": []}', "non-empty object"),
        ('{"weight_map": {"a": "../../etc/passwd"}}', "is not a .safetensors file name"),
        ('{"weight_map": {"a": 3}}', "is not a .safetensors file name"),
        ('{"weight_map": {"a": "model-00009-of-00009.safetensors"}}', "which is not in"),
    ],
)
def test_hf_bad_index(tmp_path: Path, index: str, fragment: str) -> None:
    folder = _hf(tmp_path)
    (folder / "model.safetensors.index.json").write_text(index)
    _refused(folder, "model.safetensors.index.json", fragment)


def _write_malicious_pickle(path: Path, marker: Path) -> None:
    class Exploit:
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"tok_embeddings.weight": Exploit()}, path)


def test_hf_pickle_is_refused_and_never_run(tmp_path: Path, capsys) -> None:
    folder = _hf(tmp_path)
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    _write_malicious_pickle(folder / "pytorch_model.bin", marker)
    cli_error(["info", str(folder)], capsys, "pytorch_model.bin", "refused")
    assert not marker.exists()
    # A pickle of something other than a dict of tensors is refused too.
    torch.save([torch.zeros(2)], folder / "pytorch_model.bin")
    _refused(folder, "pytorch_model.bin", "not a state dict of tensors")


def test_hf_integer_weights_are_refused(tmp_path: Path) -> None:
    folder = _hf(tmp_path)
    state = {k: torch.zeros(v.shape, dtype=torch.int64) for k, v in _load_safetensors(folder)}
    save_file(state, folder / "model.safetensors")
    _refused(folder, "dtype torch.int64, not a float type")


def _load_safetensors(folder: Path):
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors").items()


# GGUF


def _gguf_bytes(kv: list[bytes], n_tensors: int = 0) -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, len(kv)) + b"".join(kv)


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


@pytest.mark.parametrize(
    "body,fragment",
    [
        # one array of 2^60 uint8, then of 2^60 strings, then of 2^60 arrays
        (_gguf_bytes([_key("x") + struct.pack("<IIQ", 9, 0, 2**60)]), "1,152,921,504,606,846,976"),
        (_gguf_bytes([_key("x") + struct.pack("<IIQ", 9, 8, 2**60)]), "claims"),
        (_gguf_bytes([_key("x") + struct.pack("<IIQ", 9, 9, 2**60)]), "claims"),
        (_gguf_bytes([_key("x") + struct.pack("<IQ", 8, 2**62)]), "needs"),
        (_gguf_bytes([], n_tensors=2**40), "tensors cannot fit"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 2**50), "metadata entries cannot fit"),
        (_gguf_bytes([_key("x") + struct.pack("<I", 99)]), "unknown value type 99"),
    ],
)
def test_gguf_header_counts_beyond_the_file(tmp_path: Path, body: bytes, fragment: str) -> None:
    pytest.importorskip("gguf")
    path = tmp_path / "bomb.gguf"
    path.write_bytes(body + b"\0" * 64)
    _refused(path, "truncated or corrupt GGUF file", fragment, seconds=2.0)


def _write_gguf(path: Path, block_count: int, context: int = 16) -> None:
    import gguf

    writer = gguf.GGUFWriter(path, "llama")
    writer.add_block_count(block_count)
    writer.add_context_length(context)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(8)
    writer.add_head_count(2)
    writer.add_layer_norm_rms_eps(1e-5)
    ckpt = _tiny()
    from pasture.interop.gguf import gguf_name

    for key, tensor in ckpt.state_dict.items():
        writer.add_tensor(gguf_name(key), tensor.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_block_count(tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    _write_gguf(tmp_path / "a.gguf", 10**9)
    _refused(tmp_path / "a.gguf", "llama.block_count must be in 1..4,096, got 1,000,000,000")
    _write_gguf(tmp_path / "b.gguf", 4096)
    _refused(tmp_path / "b.gguf", "n_layers=4,096, but the checkpoint holds only 12 tensors")
    _write_gguf(tmp_path / "c.gguf", 1, context=2**32 - 1)
    _refused(tmp_path / "c.gguf", "llama.context_length must be in 1..16,777,216")


# generation: context, KV cache, arguments


def test_long_context_costs_only_what_is_used() -> None:
    # A config may claim 16M positions; the rotary table follows the positions actually run.
    model = Transformer(ModelArgs(**{**vars(TINY), "max_seq_len": 2**24})).eval()
    model.init_weights(seed=0)
    out = generate_tokens(model, [[1, 2, 3]], max_new_tokens=5)
    assert len(out[0]) <= 5 and model.freqs_cis.shape[0] <= 8
    # A request whose KV cache cannot fit in memory is refused before allocating it.
    with pytest.raises(PastureError, match="GiB for the KV cache"):
        generate_tokens(model, [[1]] * 4096, max_new_tokens=2**24)
    with pytest.raises(PastureError, match="max_new_tokens -5 is negative"):
        generate_tokens(model, [[1]], max_new_tokens=-5)
    assert generate_tokens(model, [[1], [1, 2]], max_new_tokens=0) == [[], []]


@pytest.fixture
def hf_with_tokenizer(tmp_path: Path, shared_data: Path) -> Path:
    from pasture.data.tokenizer import Tokenizer

    tokenizer = Tokenizer.from_file(shared_data / "models" / "stories260K" / "tok512.model")
    args = ModelArgs(**{**vars(TINY), "vocab_size": 512, "max_seq_len": 8})
    ckpt = _tiny(args)
    ckpt.tokenizer = tokenizer
    interop.save(ckpt, tmp_path / "tok-hf", "hf")
    return tmp_path / "tok-hf"


def test_generate_arguments(hf_with_tokenizer: Path, capsys) -> None:
    base = ["generate", "--checkpoint", str(hf_with_tokenizer)]
    cli_error(
        [*base, "--prompt", "Once upon a time there was a very long prompt"],
        capsys,
        "leaves no room in the model's context of 8 tokens",
    )
    cli_error([*base, "--prompt", "x", "--max-new-tokens", "-5"], capsys, "-5: must be 0")
    cuda = "cuda:999" if torch.cuda.is_available() else "cuda"
    cli_error([*base, "--prompt", "x", "--device", cuda], capsys, f"--device {cuda}")
    cli_error([*base, "--prompt", "x", "--device", "tpu:7"], capsys, "--device 'tpu:7'")
    assert main([*base, "--prompt", "x", "--max-new-tokens", "3", "--seed", "1"]) == 0


def test_eval_out_is_a_file(tmp_path: Path, capsys) -> None:
    (tmp_path / "results").write_text("a user's file")
    cli_error(
        [
            "eval",
            "--checkpoint",
            str(tmp_path / "none"),
            "--data-dir",
            str(tmp_path),
            "--out",
            str(tmp_path / "results"),
        ],
        capsys,
        "--out",
        "not a folder",
    )
    assert (tmp_path / "results").read_text() == "a user's file"


def test_hostile_header_through_a_real_process(tmp_path: Path) -> None:
    folder = _hf(tmp_path, num_hidden_layers=10**9)
    proc = subprocess.run(
        [sys.executable, "-m", "pasture.cli", "info", str(folder)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        f"pasture: error: {folder / 'config.json'}: num_hidden_layers must be in 1..4,096, "
        "got 1,000,000,000\n"
    )


def test_oversized_or_deeply_nested_json(tmp_path: Path, capsys) -> None:
    folder = _meta(tmp_path)
    (folder / "params.json").write_text("[" * 100_000)
    cli_error(["info", str(folder)], capsys, "params.json", "unreadable")
    with open(folder / "params.json", "w") as f:
        f.truncate(17 * 2**20)  # sparse: 17 MiB of zeros on disk costs nothing
    cli_error(["info", str(folder)], capsys, "params.json", "larger than 16 MiB")
