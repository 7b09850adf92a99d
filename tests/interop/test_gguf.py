"""GGUF against ollama's real llama fixture, transformers' own GGUF converter and sentencepiece."""

from __future__ import annotations

import os
from pathlib import Path

import gguf
import numpy as np
import pytest
import sentencepiece as spm
import torch

from pasture.data.tokenizer import Tokenizer
from pasture.errors import PastureError
from pasture.interop import gguf as pasture_gguf
from pasture.interop import llama2c
from pasture.interop.weights import Checkpoint
from pasture.model import ModelArgs, Transformer

DATA = Path(os.environ.get("PASTURE_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))
FIXTURE = DATA / "models" / "llama-2-tiny-random-gguf" / "llama-2-tiny-random.gguf"
LLAMA_SPM = DATA / "models" / "llama-tokenizer" / "tokenizer.model"
STORIES = DATA / "models" / "stories260K" / "stories260K.bin"
SEQUENCES = [
    [1, 15043, 3186],
    [1, 9038, 2501, 263, 931, 29892, 727, 471, 263, 2217, 7826],
    [1, 450, 7483, 310, 3444, 338, 3681, 29889],
]


@pytest.fixture(scope="module")
def fixture_ckpt() -> Checkpoint:
    assert FIXTURE.is_file(), f"missing test data {FIXTURE} (set PASTURE_DATA)"
    return pasture_gguf.load(FIXTURE)


def random_ckpt(seed: int = 0, **overrides: object) -> Checkpoint:
    fields = dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, hidden_dim=96)
    args = ModelArgs(**{**fields, "norm_eps": 1e-5, "max_seq_len": 32, **overrides})
    model = Transformer(args)
    model.init_weights(seed=seed)
    with torch.no_grad():  # norms that are not all ones, so their dtype handling shows
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.uniform_(0.5, 1.5, generator=torch.Generator().manual_seed(seed))
    return Checkpoint.from_model(model)


def transformers_logits(path: Path, sequences: list[list[int]]) -> list[torch.Tensor]:
    """Logits of transformers' LlamaForCausalLM with weights from transformers' GGUF converter.

    ``from_pretrained(gguf_file=...)`` needs accelerate, which is not installed, so this calls
    the converter it uses (``load_gguf_checkpoint``: gguf's dequantize plus the inverse of
    llama.cpp's rotary permutation) and loads the result into a model built from its config.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    config = load_gguf_checkpoint(path)["config"]
    config = LlamaConfig(**{k: v for k, v in config.items() if k != "model_type"})
    model = LlamaForCausalLM(config).float().eval()
    converted = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(converted, strict=False)
    assert not result.unexpected_keys
    assert set(result.missing_keys) <= {"lm_head.weight"} and config.tie_word_embeddings == (
        "lm_head.weight" in result.missing_keys
    )
    model.tie_weights()
    with torch.no_grad():
        return [model(torch.tensor([s])).logits[0].float() for s in sequences]


def pasture_logits(ckpt: Checkpoint, sequences: list[list[int]]) -> list[torch.Tensor]:
    model = ckpt.to_model()
    with torch.no_grad():
        return [model(torch.tensor([s]))[0] for s in sequences]


def with_hf_qk_layout(ckpt: Checkpoint) -> Checkpoint:
    """A copy whose wq/wk rows are in Hugging Face's rotate-half order (the wrong layout)."""
    state = dict(ckpt.state_dict)
    args = ckpt.args
    for i in range(args.n_layers):
        for name, heads in (("wq", args.n_heads), ("wk", args.kv_heads)):
            key = f"layers.{i}.attention.{name}.weight"
            rows, cols = state[key].shape
            state[key] = (
                state[key]
                .view(heads, rows // heads // 2, 2, cols)
                .transpose(1, 2)
                .reshape(rows, cols)
            )
    return Checkpoint(args, state)


def assert_same_weights(a: Checkpoint, b: Checkpoint) -> None:
    keys = set(a.expected_shapes()) - ({"output.weight"} if a.args.tie_embeddings else set())
    for key in keys:
        assert torch.equal(a.state_dict[key], b.state_dict[key]), key


def test_fixture_config_and_tensors(fixture_ckpt: Checkpoint) -> None:
    assert pasture_gguf.detect(FIXTURE)
    args = fixture_ckpt.args
    # MANIFEST: embedding_length 8, block_count 1, feed_forward_length 32, 2 heads, 2 kv heads
    assert (args.dim, args.n_layers, args.ffn_hidden_dim) == (8, 1, 32)
    assert (args.n_heads, args.kv_heads, args.vocab_size) == (2, 2, 32000)
    assert (args.norm_eps, args.rope_theta, args.max_seq_len) == (1e-5, 10000.0, 4096)
    assert not args.tie_embeddings
    assert fixture_ckpt.format == "gguf" and fixture_ckpt.source == str(FIXTURE)
    assert len(fixture_ckpt.state_dict) == 12
    assert all(t.dtype == torch.float32 for t in fixture_ckpt.state_dict.values())
    types = fixture_ckpt.metadata["tensor_types"]
    assert types["token_embd.weight"] == "F16" and types["output_norm.weight"] == "F32"
    assert fixture_ckpt.metadata["name"] == "LLaMA v2"


def test_embedded_tokenizer_equals_llamas_sentencepiece_model(fixture_ckpt: Checkpoint) -> None:
    sp = spm.SentencePieceProcessor(model_file=str(LLAMA_SPM))
    tok = fixture_ckpt.tokenizer
    assert tok is not None and tok.vocab_size == sp.vocab_size() == 32000
    pieces, scores, _ = tok.vocab()
    assert pieces == [sp.id_to_piece(i) for i in range(32000)]
    assert scores == [sp.get_score(i) for i in range(32000)]
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    texts = [
        "Hello world",
        "Once upon a time, there was a little girl named Lily.",
        "  leading spaces and 12345 digits",
        "Grüß Gott — 你好",
    ]
    for text in texts:
        assert tok.encode(text) == sp.encode(text), text
    assert tok.encode("Hello world") == [15043, 3186]  # MANIFEST


@pytest.mark.slow
def test_logits_match_transformers_gguf_converter(fixture_ckpt: Checkpoint) -> None:
    # transformers permutes GGUF q/k into Hugging Face's rotate-half layout and runs its own
    # model; Pasture uses the GGUF rows as they are with Meta's interleaved rotary. Equal
    # logits show that GGUF stores q/k in Meta's layout.
    for ours, theirs in zip(
        pasture_logits(fixture_ckpt, SEQUENCES),
        transformers_logits(FIXTURE, SEQUENCES),
        strict=True,
    ):
        assert (ours - theirs).abs().max() <= 1e-5
    # the check can tell the layouts apart: with q/k in rotate-half order the logits move by
    # more than the tolerance (the weights are small and random, so only by ~1e-4)
    wrong = with_hf_qk_layout(fixture_ckpt)
    right = pasture_logits(fixture_ckpt, SEQUENCES)
    moved = [
        (a - b).abs().max() for a, b in zip(pasture_logits(wrong, SEQUENCES), right, strict=True)
    ]
    assert max(moved) > 5e-5


@pytest.mark.slow
def test_f32_round_trip_is_exact(fixture_ckpt: Checkpoint, tmp_path: Path) -> None:
    out = tmp_path / "copy.gguf"
    pasture_gguf.save(fixture_ckpt, out)
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.file_type"].contents() == 0
    assert {t.tensor_type.name for t in reader.tensors} == {"F32"}
    back = pasture_gguf.load(out)
    assert back.args == fixture_ckpt.args
    assert back.state_dict.keys() == fixture_ckpt.state_dict.keys()
    assert_same_weights(back, fixture_ckpt)
    assert back.tokenizer.vocab() == fixture_ckpt.tokenizer.vocab()
    assert (back.tokenizer.bos_id, back.tokenizer.eos_id, back.tokenizer.unk_id) == (1, 2, 0)


def test_f16_round_trip_rounds_matrices_only(tmp_path: Path) -> None:
    ckpt = random_ckpt()
    out = tmp_path / "half.gguf"
    pasture_gguf.save(ckpt, out, dtype="f16")
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.file_type"].contents() == 1
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.1.attn_k.weight"] == "F16" and kinds["blk.1.ffn_norm.weight"] == "F32"
    back = pasture_gguf.load(out)
    assert back.args == ckpt.args
    for key, tensor in ckpt.state_dict.items():
        expected = tensor.half().float() if tensor.ndim == 2 else tensor
        assert torch.equal(back.state_dict[key], expected), key
    assert not torch.equal(back.state_dict["output.weight"], ckpt.state_dict["output.weight"])


@pytest.mark.slow
def test_gqa_and_tied_model_round_trips_and_matches_transformers(tmp_path: Path) -> None:
    ckpt = llama2c.load(STORIES)  # GQA (8 heads, 4 kv heads) with a tied classifier
    out = tmp_path / "stories.gguf"
    pasture_gguf.save(ckpt, out)
    assert "output.weight" not in {t.name for t in gguf.GGUFReader(out).tensors}
    back = pasture_gguf.load(out)
    assert back.args == ckpt.args and back.args.tie_embeddings
    assert_same_weights(back, ckpt)
    sequences = [[1, 403, 407, 261, 378], [1, 346, 306, 414]]
    ours = pasture_logits(ckpt, sequences)
    for a, b in zip(ours, transformers_logits(out, sequences), strict=True):
        # our writer's q/k layout is llama.cpp's; logits reach ~10, so float32 rounding ~1e-5
        assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    wrong = pasture_logits(with_hf_qk_layout(ckpt), sequences)
    assert max((a - b).abs().max() for a, b in zip(wrong, ours, strict=True)) > 0.1


def test_quantized_tensors_are_dequantized(tmp_path: Path) -> None:
    ckpt = random_ckpt(seed=1)
    out = tmp_path / "q8.gguf"
    writer = gguf.GGUFWriter(out, "llama")
    writer.add_embedding_length(64)
    writer.add_block_count(2)
    writer.add_feed_forward_length(96)
    writer.add_head_count(4)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_context_length(32)
    quantized = {}
    for key, tensor in ckpt.state_dict.items():
        array = tensor.numpy()
        if tensor.ndim == 2:
            array = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            quantized[key] = array
            writer.add_tensor(
                pasture_gguf.gguf_name(key), array, raw_dtype=gguf.GGMLQuantizationType.Q8_0
            )
        else:
            writer.add_tensor(pasture_gguf.gguf_name(key), array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    back = pasture_gguf.load(out)
    assert back.metadata["tensor_types"]["blk.0.attn_q.weight"] == "Q8_0"
    for key, blocks in quantized.items():
        # Q8_0, decoded here by hand: blocks of a float16 scale and 32 int8 values
        blocks = blocks.reshape(-1, 34)
        scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        values = blocks[:, 2:].copy().view(np.int8).astype(np.float32)
        expected = (scale * values).reshape(ckpt.state_dict[key].shape)
        np.testing.assert_array_equal(back.state_dict[key].numpy(), expected)
        assert (back.state_dict[key] - ckpt.state_dict[key]).abs().max() < 1e-3


@pytest.mark.parametrize("keep", [3, 50_000, 1_750_559])
def test_truncated_file_is_an_error_naming_it(tmp_path: Path, keep: int) -> None:
    bad = tmp_path / "cut.gguf"
    bad.write_bytes(FIXTURE.read_bytes()[:keep])
    with pytest.raises(PastureError, match=r"cut\.gguf.*truncated or corrupt"):
        pasture_gguf.load(bad)


def test_other_architectures_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "falcon.gguf"
    writer = gguf.GGUFWriter(path, "falcon")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    assert pasture_gguf.detect(path)
    with pytest.raises(PastureError, match=r"falcon\.gguf.*'falcon' is not 'llama'"):
        pasture_gguf.load(path)
    assert not pasture_gguf.detect(STORIES)


def test_tokenizer_size_must_match_the_model(tmp_path: Path) -> None:
    ckpt = random_ckpt(vocab_size=512)
    ckpt.tokenizer = Tokenizer.from_file(LLAMA_SPM)  # 32000 pieces
    with pytest.raises(PastureError, match="32000 tokens"):
        pasture_gguf.save(ckpt, tmp_path / "bad.gguf")
    assert not (tmp_path / "bad.gguf").exists()
