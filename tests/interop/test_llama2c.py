"""llama2.c ``.bin`` checkpoints against the real stories260K file and its documented layout."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from pasture.data.tokenizer import Tokenizer
from pasture.errors import PastureError
from pasture.interop import llama2c
from pasture.interop.weights import Checkpoint
from pasture.model import ModelArgs, Transformer
from pasture.model.llama import rotary_frequencies

DATA = Path(os.environ.get("PASTURE_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
STORIES = DATA / "models" / "stories260K" / "stories260K.bin"
TOK512 = DATA / "models" / "stories260K" / "tok512.model"
GGUF_FIXTURE = DATA / "models" / "llama-2-tiny-random-gguf" / "llama-2-tiny-random.gguf"


def stories_floats() -> np.ndarray:
    """The file after its 7-int header, read independently of the module under test."""
    assert STORIES.is_file(), f"missing test data {STORIES} (set PASTURE_DATA)"
    return np.fromfile(STORIES, dtype="<f4", offset=28)


def small_untied(seed: int = 0) -> Checkpoint:
    args = ModelArgs(
        dim=32,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        vocab_size=48,
        hidden_dim=40,
        norm_eps=1e-5,
        max_seq_len=16,
        tie_embeddings=False,
    )
    model = Transformer(args)
    model.init_weights(seed=seed)
    return Checkpoint.from_model(model)


def test_stories260k_header_and_config() -> None:
    assert llama2c.detect(STORIES)
    ckpt = llama2c.load(STORIES)
    args = ckpt.args
    # MANIFEST: dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4, vocab 512, seq 512
    assert (args.dim, args.ffn_hidden_dim, args.n_layers) == (64, 172, 5)
    assert (args.n_heads, args.kv_heads, args.vocab_size, args.max_seq_len) == (8, 4, 512, 512)
    assert args.tie_embeddings
    assert (args.norm_eps, args.rope_theta) == (1e-5, 10000.0)
    assert ckpt.format == "llama2c" and ckpt.source == str(STORIES)
    assert ckpt.metadata["version"] == 0
    assert ckpt.tokenizer is None  # no stories260K.model or tokenizer.model beside it
    assert all(t.dtype == torch.float32 for t in ckpt.state_dict.values())
    n_params = sum(t.numel() for t in ckpt.state_dict.values())
    assert n_params == 260_032  # MANIFEST: 264,128 floats minus the 4,096-float RoPE table


def test_tensors_sit_where_the_manifest_says() -> None:
    floats = stories_floats()
    ckpt = llama2c.load(STORIES)
    # MANIFEST order: emb[512,64], rms_att[5,64], wq[5,64,64], wk[5,32,64], wv[5,32,64], ...
    emb, rms_att, wq, wk = 512 * 64, 5 * 64, 5 * 64 * 64, 5 * 32 * 64
    np.testing.assert_array_equal(
        ckpt.state_dict["tok_embeddings.weight"].numpy(), floats[:emb].reshape(512, 64)
    )
    np.testing.assert_array_equal(
        ckpt.state_dict["layers.3.attention_norm.weight"].numpy(),
        floats[emb + 3 * 64 : emb + 4 * 64],
    )
    start = emb + rms_att + wq + 2 * 32 * 64  # layer 2 of wk
    np.testing.assert_array_equal(
        ckpt.state_dict["layers.2.attention.wk.weight"].numpy(),
        floats[start : start + 32 * 64].reshape(32, 64),
    )
    final_norm = floats[-4096 - 64 : -4096]
    np.testing.assert_array_equal(ckpt.state_dict["norm.weight"].numpy(), final_norm)
    assert emb + rms_att + wq + wk < len(floats)


def test_stored_rope_table_matches_pasture_rotary() -> None:
    table = stories_floats()[-4096:]
    real, imag = table[:2048].reshape(512, 4), table[2048:].reshape(512, 4)
    freqs = rotary_frequencies(8, torch.arange(512), 10000.0)  # (512, 4) complex
    np.testing.assert_allclose(freqs.real.numpy(), real, rtol=0, atol=1e-5)
    np.testing.assert_allclose(freqs.imag.numpy(), imag, rtol=0, atol=1e-5)


def test_v0_export_reproduces_stories260k_byte_for_byte(tmp_path: Path) -> None:
    # The rope table is recomputed the way llama2.c's model.py does (float32 torch), so the
    # whole file, table included, comes out identical.
    out = tmp_path / "stories260K.bin"
    llama2c.save(llama2c.load(STORIES), out, version=0)
    assert out.read_bytes() == STORIES.read_bytes()


def test_v1_round_trip_is_exact(tmp_path: Path) -> None:
    ckpt = llama2c.load(STORIES)
    out = tmp_path / "v1.bin"
    llama2c.save(ckpt, out)
    raw = out.read_bytes()
    assert struct.unpack_from("<Ii7iB", raw) == (0x616B3432, 1, 64, 172, 5, 8, 4, 512, 512, 1)
    assert raw[37:256] == bytes(219)
    assert len(raw) == 256 + 4 * 260_032
    # v1 order starts with the norms: the first float is layer 0's attention_norm
    first = np.frombuffer(raw, dtype="<f4", count=64, offset=256)
    np.testing.assert_array_equal(first, ckpt.state_dict["layers.0.attention_norm.weight"])
    assert llama2c.detect(out)
    back = llama2c.load(out)
    assert back.args == ckpt.args and back.metadata["version"] == 1
    assert back.state_dict.keys() == ckpt.state_dict.keys()
    for key, tensor in ckpt.state_dict.items():
        assert torch.equal(back.state_dict[key], tensor), key


@pytest.mark.parametrize("version", [0, 1])
def test_untied_model_round_trips(tmp_path: Path, version: int) -> None:
    ckpt = small_untied()
    out = tmp_path / "untied.bin"
    llama2c.save(ckpt, out, version=version)
    if version == 0:
        assert struct.unpack_from("<7i", out.read_bytes()) == (32, 40, 2, 4, 2, -48, 16)
    back = llama2c.load(out)
    assert not back.args.tie_embeddings
    for key, tensor in ckpt.state_dict.items():
        assert torch.equal(back.state_dict[key], tensor), key
    tokens = torch.tensor([[1, 7, 30, 2]])
    assert torch.equal(back.to_model()(tokens), ckpt.to_model()(tokens))


def test_tokenizer_travels_beside_the_weights(tmp_path: Path) -> None:
    ckpt = llama2c.load(STORIES)
    ckpt.tokenizer = Tokenizer.from_file(TOK512)
    out = tmp_path / "stories.bin"
    llama2c.save(ckpt, out)
    assert (tmp_path / "stories.model").read_bytes() == ckpt.tokenizer.to_bytes()
    back = llama2c.load(out)
    assert back.tokenizer is not None
    assert back.tokenizer.vocab() == ckpt.tokenizer.vocab()
    # MANIFEST reference encoding with tok512.model
    assert back.tokenizer.encode("Hello world") == [346, 306, 414, 263, 304, 341]


def test_tokenizer_model_in_the_same_folder_is_picked_up(tmp_path: Path) -> None:
    (tmp_path / "model.bin").write_bytes(STORIES.read_bytes())
    (tmp_path / "tokenizer.model").write_bytes(TOK512.read_bytes())
    assert llama2c.load(tmp_path / "model.bin").tokenizer.vocab_size == 512


@pytest.mark.parametrize("keep", [10, 28 + 4 * 1000, 1056540 - 1])
def test_truncated_file_is_an_error_naming_it(tmp_path: Path, keep: int) -> None:
    bad = tmp_path / "cut.bin"
    bad.write_bytes(STORIES.read_bytes()[:keep])
    with pytest.raises(PastureError, match=r"cut\.bin.*(truncated|shorter)"):
        llama2c.load(bad)
    assert not llama2c.detect(bad)


def test_trailing_bytes_are_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "long.bin"
    bad.write_bytes(STORIES.read_bytes() + b"\0" * 8)
    with pytest.raises(PastureError, match=r"long\.bin.*8 trailing bytes"):
        llama2c.load(bad)


def test_nonsense_header_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.bin"
    bad.write_bytes(struct.pack("<7i", 64, 172, 5, 7, 4, 512, 512) + bytes(4096))
    with pytest.raises(PastureError, match=r"bad\.bin.*n_heads=7"):
        llama2c.load(bad)
    bad.write_bytes(struct.pack("<7i", 0, 172, 5, 8, 4, 512, 512))
    with pytest.raises(PastureError, match=r"bad\.bin.*dim=0 is not positive"):
        llama2c.load(bad)
    assert not llama2c.detect(bad)
    assert not llama2c.detect(GGUF_FIXTURE)


def test_version_2_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "q80.bin"
    header = struct.pack("<Ii7iBi", 0x616B3432, 2, 64, 172, 5, 8, 4, 512, 512, 1, 64)
    bad.write_bytes(header + bytes(256 - len(header)) + bytes(1024))
    assert llama2c.detect(bad)
    with pytest.raises(PastureError, match=r"q80\.bin.*version 2.*not supported"):
        llama2c.load(bad)


def test_export_refuses_a_rope_theta_run_c_cannot_use(tmp_path: Path) -> None:
    ckpt = small_untied()
    ckpt.args = ModelArgs(**{**vars(ckpt.args), "rope_theta": 500000.0})
    with pytest.raises(PastureError, match="theta"):
        llama2c.save(ckpt, tmp_path / "x.bin")
    assert not (tmp_path / "x.bin").exists()
