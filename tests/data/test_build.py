"""`pasture data build` end to end: the full samples, kill and resume, Ray, bad input."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pasture.data.loader import LLAMA_MIXTURE, MixtureLoader
from pasture.data.pipeline import BuildConfig, build_dataset, load_config
from pasture.data.shards import list_shards
from pasture.errors import PastureError

REPO = Path(__file__).resolve().parents[2]
# Small real files from every source, for the builds that run more than once.
SUBSET = [
    "c4/olmo_c4-sample.01.json.gz",
    "c4/olmo_c4-sample.02.json.gz",
    "commoncrawl/wet/ccnet_test_sample.warc.wet",
    "commoncrawl/wet/CC-MAIN-2024-22_whirlwind.warc.wet.gz",
    "commoncrawl/warc/CC-MAIN-2020-34_excerpt_resiliparse.warc.gz",
    "github/micrograd-c911406e5ace.tar.gz",
    "github/googler-f55837974ae0.tar.gz",
    "wikipedia/bgwiki-latest-pages-articles-shortened.xml.bz2",
    "wikipedia/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2",
    "books/gutenberg/972.txt",
    "books/gutenberg/9198-8.txt",
    "arxiv/tex/1707.08043/main.tex",
    "arxiv/eprint/1602.00123.tar",
    "stackexchange/coffee.stackexchange.com/Posts.xml",
]


# A smaller perplexity LM so that repeated builds stay quick; otherwise the shipped config.
SMALL = [
    "sources.commoncrawl.lm_order=3",
    "sources.commoncrawl.lm_vocab_size=2000",
    "sources.commoncrawl.lm_max_chars=3000000",
]


def _config(**overrides) -> BuildConfig:
    cfg = load_config(REPO / "configs" / "data" / "llama.toml", SMALL)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def _subset(shared_data: Path, dst: Path) -> Path:
    for rel in SUBSET:
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / "pretrain" / rel, target)
    return dst


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


@pytest.fixture(scope="module")
def full_build(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("full")
    tokenizer = shared_data / "models" / "llama-tokenizer" / "tokenizer.model"
    cfg = _config(workers=2, write_dropped=True)
    report = build_dataset(cfg, shared_data / "pretrain", out, tokenizer=str(tokenizer))
    return out, report, cfg


@pytest.fixture(scope="module")
def subset_build(shared_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """The subset built once, in-process with two workers: the clean output the kill, Ray and
    bad-input tests compare against. Returns (input root, output folder, report)."""
    root = _subset(shared_data, tmp_path_factory.mktemp("subset_in"))
    out = tmp_path_factory.mktemp("subset_out")
    tokenizer = str(shared_data / "models" / "llama-tokenizer" / "tokenizer.model")
    report = build_dataset(_config(workers=2), root, out, "local", tokenizer)
    return root, out, report


@pytest.mark.slow
def test_full_build_report(full_build) -> None:
    out, report, _ = full_build
    assert set(report["sources"]) == set(LLAMA_MIXTURE)
    assert json.loads((out / "report.json").read_text()) == report
    assert "| commoncrawl |" in (out / "report.md").read_text()
    for row in report["table1"]:
        assert row["tokens"] > 0 and row["epochs"] > 0 and row["disk_bytes"] > 0
    # issue 10's "done when", with the shipped defaults: no empty source (StackExchange's
    # two sample sites are its largest given), C4 keeps ≥ 99.5% at the language stage, and
    # no id comes out twice within a source.
    assert report["empty_sources"] == []
    assert report["sources"]["stackexchange"]["documents"] == 663 + 225
    language = report["sources"]["c4"]["stages"]["language"]
    assert language["docs_out"] / language["docs_in"] >= 0.995
    for source in report["sources"]:
        ids = []
        for path in (out / "documents" / source).glob("*.jsonl.gz"):
            with gzip.open(path, "rt") as f:
                ids += [json.loads(line)["id"] for line in f]
        assert ids and len(ids) == len(set(ids)), source
    github = report["sources"]["github"]["stages"]
    assert any("license" in s["dropped"] for s in github.values())
    books = report["sources"]["books"]["stages"]
    assert sum(s["dropped"].get("near_duplicate", 0) for s in books.values()) == 1
    wiki = report["sources"]["wikipedia"]["stages"]
    assert sum(s["dropped"].get("language", 0) for s in wiki.values()) > 100  # jawiki
    assert sum(s["dropped"].get("truncated", 0) for s in wiki.values()) >= 2  # uk, ja
    dropped = []
    for path in (out / "dropped").glob("*.jsonl.gz"):
        with gzip.open(path, "rt") as f:
            dropped += [json.loads(line) for line in f]
    assert {"license", "near_duplicate", "namespace", "language"} <= {d["reason"] for d in dropped}


@pytest.mark.slow
def test_full_build_feeds_the_loader(full_build) -> None:
    out, report, cfg = full_build
    shards = {name: list_shards(out / "tokens" / name) for name in report["sources"]}
    loader = MixtureLoader(shards, cfg.mixture, seq_len=256, batch_size=4, seed=0)
    inputs, targets = next(iter(loader))
    assert inputs.shape == (4, 256) and targets.shape == (4, 256)
    assert np.array_equal(inputs[:, 1:].numpy(), targets[:, :-1].numpy())
    assert int(inputs.max()) < 32000


def _cli_build(input_root: Path, out: Path, tokenizer: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "pasture.cli",
        "data",
        "build",
        "--config",
        str(REPO / "configs" / "data" / "llama.toml"),
        *(f"--set={o}" for o in SMALL),
        "--input-root",
        str(input_root),
        "--out",
        str(out),
        "--tokenizer",
        str(tokenizer),
        "--workers",
        "1",
        *extra,
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_kill_and_rerun_is_byte_identical(subset_build, shared_data: Path, tmp_path: Path) -> None:
    """``pasture data build`` (one worker) killed after three finished files, then run again,
    writes the bytes of the uninterrupted in-process build with two workers (its recorded
    config.json differs in the worker count alone)."""
    root, clean, _ = subset_build
    tokenizer = shared_data / "models" / "llama-tokenizer" / "tokenizer.model"
    killed = _cli_build(root, tmp_path / "killed", tokenizer)
    done = tmp_path / "killed" / "done"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(done.glob("*.docs.json"))) < 3:
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    finished = len(list(done.glob("*.docs.json")))
    assert 3 <= finished < len(list((clean / "done").glob("*.docs.json")))
    rerun = _cli_build(root, tmp_path / "killed", tokenizer)
    assert rerun.wait(timeout=300) == 0, rerun.stderr.read()
    ours, theirs = _files(tmp_path / "killed"), _files(clean)
    settings = [json.loads(files.pop("config.json")) for files in (ours, theirs)]
    assert (settings[0].pop("workers"), settings[1].pop("workers")) == (1, 2)
    assert ours == theirs and settings[0] == settings[1]  # the worker count is all that differs


@pytest.mark.slow
def test_ray_executor_matches_local(subset_build, shared_data: Path, tmp_path: Path) -> None:
    root, clean, _ = subset_build
    tokenizer = str(shared_data / "models" / "llama-tokenizer" / "tokenizer.model")
    build_dataset(_config(workers=2), root, tmp_path / "ray", "ray", tokenizer)
    local, ray_out = _files(clean), _files(tmp_path / "ray")
    assert len(local) > 20 and local == ray_out


@pytest.mark.slow
def test_bad_inputs_are_skipped_with_their_reason(
    subset_build, shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tokenizer = str(shared_data / "models" / "llama-tokenizer" / "tokenizer.model")
    clean = subset_build[2]
    bad = _subset(shared_data, tmp_path / "bad_in")
    planted = {
        "c4/truncated.json.gz": (bad / "c4/olmo_c4-sample.01.json.gz").read_bytes()[:3000],
        "c4/invalid-utf8.json.gz": gzip.compress(
            b'{"text": "caf\\u00e9 \xff\xfe bad", "url": "x"}\n'
        ),
        "stackexchange/broken.stackexchange.com/Posts.xml": b'<?xml version="1.0"?>\n<posts>\n'
        b'  <row Id="1" PostTypeId="1" Score="1" Title="T" Body="&lt;p&gt;B&lt;/p&gt;" />\n'
        b"  <row Id=",
        "wikipedia/empty.xml": b"",
        "github/corrupt.tar.gz": b"\x1f\x8b\x08\x00" + b"\x00" * 40,
        "commoncrawl/warc/truncated.warc.gz": (
            bad / "commoncrawl/warc/CC-MAIN-2020-34_excerpt_resiliparse.warc.gz"
        ).read_bytes()[:40000],
    }
    for rel, data in planted.items():
        (bad / rel).parent.mkdir(parents=True, exist_ok=True)
        (bad / rel).write_bytes(data)
    with caplog.at_level(logging.WARNING, logger="pasture.data"):  # in-process: workers=1
        report = build_dataset(_config(workers=1), bad, tmp_path / "bad", "local", tokenizer)
    for rel in planted:  # one log line names each bad file
        lines = [r.getMessage() for r in caplog.records if str(bad / rel) in r.getMessage()]
        assert lines and "skipped" in lines[0], rel
    reasons = {
        source: {r for s in entry["stages"].values() for r in s["dropped"]}
        for source, entry in report["sources"].items()
    }
    assert reasons["github"] & {"corrupt", "truncated"}
    assert reasons["wikipedia"] & {"empty_file", "bad_xml"}
    assert reasons["commoncrawl"] & {"truncated", "malformed_record"}
    assert reasons["stackexchange"] & {"bad_xml", "truncated"}
    assert reasons["c4"] & {"truncated", "bad_encoding", "corrupt"}
    # Nothing from the clean files is lost: every clean document is still there.
    for source in clean["sources"]:
        docs = report["sources"][source]["documents"]
        assert docs >= clean["sources"][source]["documents"], source


@pytest.mark.slow
def test_config_errors_stop_before_any_work(tmp_path: Path, shared_data: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[mixture]\ncommoncrawl = 0.5\nreddit = 0.5\n")
    with pytest.raises(PastureError, match="unknown source 'reddit'"):
        load_config(bad)
    bad.write_text("[sources.github]\nlicences = ['MIT']\n")
    with pytest.raises(PastureError, match="sources.github: unknown key 'licences'"):
        load_config(bad)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pasture.cli",
            "data",
            "build",
            "--config",
            str(bad),
            "--input-root",
            str(shared_data / "pretrain"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "unknown key 'licences'" in proc.stderr
    assert not (tmp_path / "out").exists()
