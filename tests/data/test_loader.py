"""Mixture loader: proportions, packing, determinism, rank sharding, exact resume, epochs.

Synthetic shards give each source its own token range (source i writes ids in
[1000 i, 1000 i + 1000)), so every window tells which source it came from.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pasture.data.loader import LLAMA_MIXTURE, MixtureLoader, mixture_report
from pasture.data.shards import ShardWriter
from pasture.errors import PastureError

VOCAB, EOS = 8000, 7999
NAMES = list(LLAMA_MIXTURE)


def write_source(prefix: Path, base: int, doc_lengths: list[int]) -> Path:
    """One shard of documents whose ids count up from ``base`` (mod 1000, within the range)."""
    with ShardWriter(prefix, VOCAB, EOS) as w:
        n = 0
        for length in doc_lengths:
            w.add(base + (np.arange(n, n + length) % 1000))
            n += length
    return prefix


@pytest.fixture(scope="module")
def llama_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """The seven paper sources, two shards each, of unequal sizes."""
    root = tmp_path_factory.mktemp("mixture")
    rng = np.random.default_rng(0)
    sources = {}
    for i, name in enumerate(NAMES):
        sources[name] = [
            write_source(root / f"{name}-{j}", 1000 * i, rng.integers(1, 60, 20 + 10 * i).tolist())
            for j in range(2)
        ]
    return sources


def source_of(window: np.ndarray) -> int:
    ids = window[window != EOS]
    kinds = set((ids // 1000).tolist())
    assert len(kinds) == 1, "a window mixes sources"
    return kinds.pop()


def take(loader: MixtureLoader, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [loader.next_batch() for _ in range(steps)]


def make(sources: dict, **kw: object) -> MixtureLoader:
    args = dict(weights=LLAMA_MIXTURE, seq_len=7, batch_size=4, seed=1234)
    args.update(kw)
    return MixtureLoader(sources, **args)


def test_proportions_match_the_weights(llama_sources: dict) -> None:
    loader = make(llama_sources, batch_size=500)
    counts = np.zeros(len(NAMES), dtype=np.int64)
    for inputs, targets in take(loader, 40):
        assert inputs.dtype == np.int64 and inputs.shape == (500, 7)
        assert np.array_equal(inputs[:, 1:], targets[:, :-1])  # targets are shifted inputs
        for row in np.concatenate([inputs, targets[:, -1:]], axis=1):
            counts[source_of(row)] += 1
    n = counts.sum()
    assert n == 20_000
    for i, name in enumerate(NAMES):
        p = LLAMA_MIXTURE[name] / sum(LLAMA_MIXTURE.values())
        assert abs(counts[i] - n * p) <= 4 * math.sqrt(n * p * (1 - p)), (name, counts[i], n * p)
    # Bookkeeping agrees: every source's windows consumed add up to the sequences drawn.
    state = loader.state_dict()
    assert state["sequences"] == n
    for i, name in enumerate(NAMES):
        s = state["sources"][name]
        assert s["epoch"] * s["windows"] + s["position"] == counts[i]
    assert state["sources"]["commoncrawl"]["epoch"] > 1  # sources repeat when exhausted


def test_iter_yields_torch_int64(llama_sources: dict) -> None:
    inputs, targets = next(iter(make(llama_sources)))
    assert isinstance(inputs, torch.Tensor) and inputs.dtype == torch.int64
    assert inputs.shape == targets.shape == (4, 7)
    assert inputs.is_contiguous() and targets.is_contiguous()


def test_deterministic_given_seed(llama_sources: dict) -> None:
    a, b = take(make(llama_sources), 5), take(make(llama_sources), 5)
    c = take(make(llama_sources, seed=99), 5)
    assert all(np.array_equal(x[0], y[0]) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c, strict=True))


def test_ranks_interleave_into_the_single_rank_stream(llama_sources: dict) -> None:
    world, batch, steps = 3, 2, 4
    single = np.concatenate(
        [x for x, _ in take(make(llama_sources, batch_size=world * batch), steps)]
    )
    per_rank = [
        take(make(llama_sources, batch_size=batch, rank=r, world_size=world), steps)
        for r in range(world)
    ]
    for step in range(steps):
        for i in range(batch):
            for r in range(world):
                k = step * world * batch + i * world + r  # global sequence k goes to k % world
                assert np.array_equal(per_rank[r][step][0][i], single[k])


def test_exact_resume_through_json(llama_sources: dict) -> None:
    reference = take(make(llama_sources), 12)
    first = make(llama_sources)
    take(first, 5)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make(llama_sources, seed=1234)
    resumed.load_state_dict(state)
    for (x, y), (rx, ry) in zip(take(resumed, 7), reference[5:], strict=True):
        assert np.array_equal(x, rx) and np.array_equal(y, ry)


def test_resume_with_another_world_size(llama_sources: dict) -> None:
    batch = 3
    stream = np.concatenate([x for x, _ in take(make(llama_sources, batch_size=batch), 20)])
    two = [make(llama_sources, batch_size=batch, rank=r, world_size=2) for r in range(2)]
    for loader in two:
        take(loader, 3)  # 2 ranks x 3 steps x 3 = 18 global sequences
    assert two[0].state_dict() == two[1].state_dict()  # any rank may save it
    state = json.loads(json.dumps(two[0].state_dict()))
    assert state["sequences"] == 18
    four = [make(llama_sources, batch_size=batch, rank=r, world_size=4) for r in range(4)]
    for loader in four:
        loader.load_state_dict(state)
    batches = [take(loader, 2) for loader in four]  # 2 steps x 4 ranks x 3 = 24 sequences
    for k in range(18, 18 + 24):
        step, i = divmod((k - 18) // 4, batch)
        assert np.array_equal(batches[k % 4][step][0][i], stream[k]), k


def test_small_source_repeats_with_a_new_order(tmp_path: Path) -> None:
    # One document of ids 1..39 plus EOS: 40 tokens = 10 windows of 4; window w starts at 1 + 4w.
    with ShardWriter(tmp_path / "tiny", VOCAB, EOS) as w:
        w.add(np.arange(1, 40))
    loader = MixtureLoader({"tiny": [tmp_path / "tiny"]}, {"tiny": 1.0}, seq_len=3, batch_size=5)
    order = [(int(x[0]) - 1) // 4 for inputs, _ in take(loader, 6) for x in inputs]
    epochs = [order[0:10], order[10:20], order[20:30]]
    assert all(sorted(e) == list(range(10)) for e in epochs)  # each epoch: every window once
    assert epochs[0] != epochs[1] != epochs[2]
    assert loader.state_dict()["sources"]["tiny"] == {"epoch": 3, "position": 0, "windows": 10}


def test_epoch_orders_look_uniform(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "tiny", VOCAB, EOS) as w:
        w.add(np.arange(1, 40))  # 10 windows of 4, as above
    loader = MixtureLoader({"tiny": [tmp_path / "tiny"]}, {"tiny": 1.0}, seq_len=3, batch_size=1000)
    order = [(int(x[0]) - 1) // 4 for inputs, _ in take(loader, 20) for x in inputs]
    first = np.bincount(order[::10], minlength=10)  # each epoch's first window, 2000 epochs
    chi2 = (((first - 200) ** 2) / 200).sum()
    assert chi2 < 30  # 9 degrees of freedom: p ≈ 0.0005


def test_windows_pack_across_documents_and_shards(tmp_path: Path) -> None:
    sizes = [[5, 9], [1], [13, 2, 7]]  # shard boundaries fall inside windows
    prefixes = []
    stream: list[int] = []
    for j, docs in enumerate(sizes):
        with ShardWriter(tmp_path / f"s{j}", VOCAB, EOS) as w:
            for n in docs:
                ids = list(range(len(stream) + 1, len(stream) + 1 + n))
                w.add(ids)
                stream += [*ids, EOS]
        prefixes.append(tmp_path / f"s{j}")
    window = 6
    loader = MixtureLoader({"x": prefixes}, {"x": 1}, seq_len=window - 1, batch_size=1)
    got = []
    for _ in range(len(stream) // window):
        inputs, targets = loader.next_batch()
        got.append([*inputs[0].tolist(), int(targets[0, -1])])
    expected = [stream[w * window : (w + 1) * window] for w in range(len(stream) // window)]
    assert sorted(got) == sorted(expected)  # every window exactly once; the tail is dropped


def test_zero_weight_source_is_never_sampled(llama_sources: dict) -> None:
    weights = dict(LLAMA_MIXTURE, arxiv=0.0, stackexchange=0.0)
    loader = make(llama_sources, weights=weights, batch_size=1000)
    inputs, _ = loader.next_batch()
    kinds = {source_of(row) for row in inputs}
    assert NAMES.index("arxiv") not in kinds and NAMES.index("stackexchange") not in kinds


def test_validation_errors(tmp_path: Path, llama_sources: dict) -> None:
    three = {n: llama_sources[n] for n in NAMES[:3]}
    with pytest.raises(PastureError, match=r"weights name source\(s\) \['arxiv', 'books'"):
        make(three)  # LLAMA_MIXTURE names sources without shards
    with pytest.raises(PastureError, match=r"\['github'\] have shards but no mixture weight"):
        make(three, weights={"commoncrawl": 1, "c4": 1})
    with pytest.raises(PastureError, match="sum to 0"):
        make(three, weights={n: 0 for n in three})
    with pytest.raises(PastureError, match="must be finite"):
        make(three, weights={"commoncrawl": 1, "c4": -1, "github": 1})
    with pytest.raises(PastureError, match="'c4' has no shards"):
        make(dict(three, c4=[]), weights={n: 1 for n in three})
    short = write_source(tmp_path / "short", 0, [3])  # 4 tokens
    with pytest.raises(PastureError, match=r"'c4' has 4 tokens .* fewer than one window"):
        make(dict(three, c4=[short]), weights={n: 1 for n in three})
    with pytest.raises(PastureError, match="no such shard index"):
        make(dict(three, c4=[tmp_path / "absent"]), weights={n: 1 for n in three})
    with pytest.raises(PastureError, match="rank 2 outside world_size 2"):
        make(llama_sources, rank=2, world_size=2)


def test_resume_refuses_a_different_setup(llama_sources: dict) -> None:
    state = make(llama_sources).state_dict()
    with pytest.raises(PastureError, match="seq_len=7, this loader 8"):
        make(llama_sources, seq_len=8).load_state_dict(state)
    with pytest.raises(PastureError, match="resume with the same mixture"):
        make(llama_sources, weights=dict(LLAMA_MIXTURE, c4=0.5)).load_state_dict(state)
    fewer = dict(llama_sources, books=llama_sources["books"][:1])
    with pytest.raises(PastureError, match="'books' has .* resume with the same shards"):
        make(fewer).load_state_dict(state)


def test_mixture_report_reproduces_table_1_epochs() -> None:
    paper_epochs = {  # Table 1
        "commoncrawl": 1.10, "c4": 1.06, "github": 0.64, "wikipedia": 2.45,
        "books": 2.23, "arxiv": 1.06, "stackexchange": 1.03,
    }  # fmt: skip
    tokens = {n: round(LLAMA_MIXTURE[n] * 1.4e12 / e) for n, e in paper_epochs.items()}
    disk = {"commoncrawl": 3_300_000_000_000, "books": 85_000_000_000}
    disk = {n: disk.get(n, 1) for n in NAMES}
    rows, table = mixture_report(tokens, LLAMA_MIXTURE, token_budget=1.4e12, disk_bytes=disk)
    assert [r["source"] for r in rows] == NAMES
    for r in rows:
        assert r["epochs"] == pytest.approx(paper_epochs[r["source"]], rel=1e-6)
        assert r["sampling_proportion"] == pytest.approx(LLAMA_MIXTURE[r["source"]])
    assert "| commoncrawl | 67.0% | 1.10 | 3.3 TB |" in table
    assert "| books | 4.5% | 2.23 | 85 GB |" in table
    rows_1t, _ = mixture_report(tokens, token_budget=1e12)
    assert rows_1t[0]["epochs"] == pytest.approx(1.10 / 1.4)
    with pytest.raises(PastureError, match="no token count for source 'c4'"):
        mixture_report({"commoncrawl": 10})
