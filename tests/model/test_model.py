"""The architecture: preset sizes, meta-device builds, cached decoding."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from pasture.errors import PastureError
from pasture.interop.hf import config_from_args
from pasture.model import (
    ConfigError,
    ModelArgs,
    Transformer,
    count_parameters,
    preset,
    state_dict_shapes,
)

# Table 2 of the paper. The issue lists 65,285,816,320 for 65B; Meta's released 65B
# (hidden 22016) has 65,285,660,672, which Hugging Face's model agrees with below.
PAPER_COUNTS = {
    "7B": 6_738_415_616,
    "13B": 13_015_864_320,
    "33B": 32_528_943_616,
    "65B": 65_285_660_672,
}


@pytest.mark.parametrize("name", PAPER_COUNTS)
def test_preset_parameter_counts(name: str) -> None:
    args = preset(name)
    assert (args.vocab_size, args.max_seq_len) == (32000, 2048)
    assert count_parameters(args) == PAPER_COUNTS[name]
    with torch.device("meta"):
        ours = Transformer(args)
        theirs = LlamaForCausalLM(LlamaConfig(**config_from_args(args, torch.float32)))
    assert all(p.is_meta for p in ours.parameters())
    assert sum(p.numel() for p in ours.parameters()) == PAPER_COUNTS[name]
    assert sum(p.numel() for p in theirs.parameters()) == PAPER_COUNTS[name]


def test_preset_norm_eps_match_meta_params() -> None:
    # Meta's released params.json: norm_eps 1e-6 for 7B/13B/33B, 1e-5 for 65B.
    eps = {name: preset(name).norm_eps for name in PAPER_COUNTS}
    assert eps == {"7B": 1e-6, "13B": 1e-6, "33B": 1e-6, "65B": 1e-5}


def test_swiglu_hidden_sizes_match_meta() -> None:
    # 2/3·4d rounded up to a multiple of 256: Meta's 7B/13B/33B/65B hidden sizes.
    hidden = {name: preset(name).ffn_hidden_dim for name in PAPER_COUNTS}
    assert hidden == {"7B": 11008, "13B": 13824, "33B": 17920, "65B": 22016}


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        ModelArgs(dim=100, n_heads=3)
    with pytest.raises(ValueError, match="n_kv_heads 3: n_heads 4 is not a multiple of it"):
        ModelArgs(dim=64, n_heads=4, n_kv_heads=3)


def _random_model(args: ModelArgs, seed: int = 0) -> Transformer:
    model = Transformer(args)
    model.init_weights(std=0.2, seed=seed)
    return model.eval()


@pytest.mark.parametrize("n_kv_heads", [None, 2])
def test_cached_decoding_equals_full_forward(n_kv_heads: int | None) -> None:
    args = ModelArgs(
        dim=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=n_kv_heads,
        vocab_size=97,
        multiple_of=16,
        max_seq_len=64,
    )
    model = _random_model(args)
    tokens = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(tokens)  # (3, 20, 97)
        model.setup_cache(batch_size=3, max_seq_len=32)
        chunks = [model(tokens[:, :7], start_pos=0)]  # prefill
        chunks.append(model(tokens[:, 7:11], start_pos=7))  # a chunk after a cached prefix
        chunks += [model(tokens[:, t : t + 1], start_pos=t) for t in range(11, 20)]  # decode
        model.clear_cache()
    cached = torch.cat(chunks, dim=1)
    assert full.abs().max() > 1.0  # logits far from zero, so the bound below means something
    torch.testing.assert_close(cached, full, atol=1e-5, rtol=0)


def test_causality() -> None:
    model = _random_model(preset("debug-gqa", vocab_size=50))
    a = torch.randint(0, 50, (1, 12), generator=torch.Generator().manual_seed(2))
    b = a.clone()
    b[0, 8:] = (b[0, 8:] + 1) % 50
    with torch.no_grad():
        la, lb = model(a), model(b)
    torch.testing.assert_close(la[:, :8], lb[:, :8], atol=1e-6, rtol=0)
    assert (la[:, 8:] - lb[:, 8:]).abs().max() > 1e-3


def test_packed_sequences_score_as_if_alone() -> None:
    """Two sequences in one row (positions restart, a block-diagonal causal mask) give each
    the logits it has alone; hidden + logits at chosen positions give forward's values there."""
    model = _random_model(preset("debug-gqa", vocab_size=50))
    g = torch.Generator().manual_seed(3)
    a, b = torch.randint(0, 50, (1, 7), generator=g), torch.randint(0, 50, (1, 5), generator=g)
    tokens = torch.cat([a, b], dim=1)  # (1, 12)
    positions = torch.cat([torch.arange(7), torch.arange(5)])[None]
    segment = torch.tensor([0] * 7 + [1] * 5)
    mask = (segment[:, None] == segment[None, :]) & torch.ones(12, 12, dtype=torch.bool).tril()
    with torch.no_grad():
        packed = model(tokens, positions=positions, mask=mask[None])  # (1, 12, 50)
        h = model.hidden(tokens, positions=positions, mask=mask[None])
        picked = model.logits(h[:, [6, 11]])  # (1, 2, 50): each sequence's last position
        alone = torch.cat([model(a), model(b)], dim=1)
    torch.testing.assert_close(packed, alone, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(picked, alone[:, [6, 11]], atol=1e-4, rtol=1e-5)
    assert (alone[:, 7:] - model(tokens)[:, 7:]).abs().max() > 1e-3  # packing mattered
    with pytest.raises(ValueError, match="the mask must cover 12 keys, got 11"):
        model(tokens, positions=positions, mask=mask[None, :, :11])
    with pytest.raises(ValueError, match=r"positions must be in 0\.\.255"):
        model(tokens, positions=positions + 250)


def test_trains_and_ties() -> None:
    model = Transformer(preset("debug", vocab_size=64, tie_embeddings=True))
    model.init_weights(seed=0)
    assert model.output.weight is model.tok_embeddings.weight
    tokens = torch.randint(0, 64, (2, 16))
    loss = torch.nn.functional.cross_entropy(
        model(tokens)[:, :-1].flatten(0, 1), tokens[:, 1:].flatten()
    )
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_meta_device_then_initialize() -> None:
    with torch.device("meta"):
        model = Transformer(preset("debug", vocab_size=64))
    model.to_empty(device="cpu")
    model.init_weights(seed=3)
    reference = Transformer(preset("debug", vocab_size=64))
    reference.init_weights(seed=3)
    tokens = torch.arange(10)[None]
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), reference(tokens), atol=0, rtol=0)


def test_rotary_is_the_same_function_eager_and_compiled() -> None:
    # Eager takes one complex multiply; under torch.compile the real-arithmetic branch runs
    # (Inductor has no complex codegen). Both must rotate Meta's interleaved pairs alike.
    from pasture.model.llama import apply_rotary, rotary_frequencies

    x = torch.randn(2, 16, 4, 8)
    table = torch.view_as_real(rotary_frequencies(8, torch.arange(16), 10000.0)).contiguous()
    compiled = torch.compile(apply_rotary, backend="aot_eager", fullgraph=True)
    for freqs in (table, table[torch.randint(0, 16, (2, 16))]):  # shared, per-row positions
        torch.testing.assert_close(compiled(x, freqs), apply_rotary(x, freqs), rtol=0, atol=1e-6)
    pair = x[0, 3, 1, 2:4]  # pair k = 1 at position 3: a plain 2-D rotation
    angle = 3 * 10000.0 ** (-2 / 8)
    want = torch.tensor(
        [
            pair[0] * math.cos(angle) - pair[1] * math.sin(angle),
            pair[0] * math.sin(angle) + pair[1] * math.cos(angle),
        ]
    )
    torch.testing.assert_close(apply_rotary(x, table)[0, 3, 1, 2:4], want)


@pytest.mark.parametrize("name", ["7B", "65B", "debug", "debug-gqa", "stories15M"])
@pytest.mark.parametrize("tied", [False, True])
def test_state_dict_shapes_without_building(name: str, tied: bool) -> None:
    args = preset(name, tie_embeddings=tied)
    with torch.device("meta"):
        built = Transformer(args).state_dict()
    assert state_dict_shapes(args) == {k: tuple(v.shape) for k, v in built.items()}


def test_rotary_table_grows_with_the_positions_used() -> None:
    args = preset("debug", vocab_size=64, max_seq_len=2**24)
    model = Transformer(args)
    model.init_weights(seed=0)
    short = model.rotary(torch.device("cpu"), 5).clone()
    assert short.shape[0] == 8  # the next power of two, not 16M rows
    full = preset("debug", vocab_size=64)  # the same rows from a 256-position table
    reference = Transformer(full).rotary(torch.device("cpu"))
    assert torch.equal(short, reference[:8])
    tokens = torch.randint(0, 64, (1, 40))
    logits = model(tokens)
    assert model.freqs_cis.shape[0] == 64
    bounded = Transformer(full)
    bounded.load_state_dict(model.state_dict())
    assert torch.equal(logits, bounded(tokens))


@pytest.mark.parametrize(
    "field,value,problem",
    [
        ("n_layers", 0, "must be in 1..4,096, got 0"),
        ("n_layers", 10**9, "must be in 1..4,096"),
        ("dim", "64", "must be an integer, got '64'"),
        ("dim", 64.0, "must be an integer, got 64.0"),
        ("dim", True, "must be an integer, got True"),
        ("n_kv_heads", 0, "must be in 1..4,096, got 0"),
        ("max_seq_len", 10**12, "must be in 1..16,777,216"),
        ("norm_eps", float("nan"), "must be a finite number above 0, got nan"),
        ("norm_eps", 0, "must be a finite number above 0"),
        ("rope_theta", 10**400, "must be a finite number above 0"),
        ("ffn_dim_multiplier", float("inf"), "must be a finite number above 0"),
        ("tie_embeddings", "no", "must be true/false"),
        ("multiple_of", 0, "must be in 1..65,536, got 0"),
    ],
)
def test_config_values_are_checked(field: str, value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        ModelArgs(**{**vars(preset("debug")), field: value})
    assert (info.value.field, info.value.problem) == (field, problem) or problem in str(info.value)
    assert isinstance(info.value, PastureError) and isinstance(info.value, ValueError)


def test_rotary_table_grown_during_evaluation_serves_training() -> None:
    """Generation or evaluation on longer text grows the table under inference_mode; the next
    training step must still be able to save it for backward."""
    model = Transformer(ModelArgs(dim=32, n_layers=1, n_heads=2, vocab_size=50, multiple_of=16))
    with torch.inference_mode():
        model(torch.zeros(1, 4, dtype=torch.long))
        model(torch.zeros(1, 40, dtype=torch.long))  # grows the table
    loss = model(torch.zeros(1, 33, dtype=torch.long)).sum()
    loss.backward()
    assert model.tok_embeddings.weight.grad is not None
