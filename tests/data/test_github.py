"""The GitHub source on the real repository samples: license, quality, boilerplate, dedup."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from pasture.data.document import Context, Document, run_steps
from pasture.data.sources import github

SAMPLES = {
    "cJSON": "cJSON-a29814f285cc.tar.gz",
    "googler": "googler-f55837974ae0.tar.gz",
    "itsdangerous": "itsdangerous-672971d66a2e.tar.gz",
    "micrograd": "micrograd-c911406e5ace.tar.gz",
    "python-fire": "python-fire-716bbc23d7ec.tar.gz",
}


class Run:
    """Everything one shard gives: kept documents, drops by (stage, reason, id) and bad inputs."""

    def __init__(self, inputs: list[Path], opts: github.Options | None = None) -> None:
        opts = opts or github.Options()
        self.drops: list[tuple[str, str, Document | None, str]] = []
        self.ctx = Context("test", sink=lambda *event: self.drops.append(event))
        docs = (doc for path in inputs for doc in github.read(path, self.ctx, opts))
        self.docs = list(run_steps(docs, github.steps(opts, Path("unused")), self.ctx))
        self.by_path = {(d.metadata["repo"], d.metadata["path"]): d for d in self.docs}

    def dropped(self, reason: str) -> dict[tuple[str, str], str]:
        """(repo, path) -> stage of the documents dropped for ``reason``."""
        return {
            (doc.metadata["repo"], doc.metadata["path"]): stage
            for stage, why, doc, _ in self.drops
            if why == reason and doc is not None
        }

    def bad_inputs(self) -> list[tuple[str, str]]:
        return [(file, why) for _, why, doc, file in self.drops if doc is None]


@pytest.fixture(scope="module")
def sample_dir(shared_data: Path) -> Path:
    return shared_data / "pretrain"


@pytest.fixture(scope="module")
def full_run(sample_dir: Path) -> Run:
    """Every text file (no extension whitelist), so each later filter shows what it does."""
    inputs = github.find_inputs(sample_dir, github.Options())
    assert [p.name for p in inputs] == sorted(SAMPLES.values())
    [shard] = github.shards(inputs, github.Options())  # one shard: one dedup scope
    return Run(shard, github.Options(extensions=None))


@pytest.fixture(scope="module")
def default_run(sample_dir: Path) -> Run:
    inputs = github.find_inputs(sample_dir, github.Options())
    return Run(inputs)


def _tar_members(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(path) as tf:
        return [(m, tf.extractfile(m).read() if m.isfile() else None) for m in tf.getmembers()]


def _write_tar_gz(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return path


def _file(name: str, text: str) -> tuple[tarfile.TarInfo, bytes]:
    data = text.encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


# --- license ------------------------------------------------------------------------------


def test_licenses_detected_and_gpl_repo_dropped(full_run: Run) -> None:
    licenses = {d.metadata["repo"]: d.metadata["license"] for d in full_run.docs}
    assert licenses == {
        "cJSON": "MIT",
        "itsdangerous": "BSD-3-Clause",
        "micrograd": "MIT",
        "python-fire": "Apache-2.0",
    }
    license_drops = full_run.dropped("license")
    assert {repo for repo, _ in license_drops} == {"googler"}
    assert len(license_drops) == 21  # every file of the archive, the script `googler` included
    assert ("googler", "googler") in license_drops
    assert not [d for d in full_run.docs if d.metadata["repo"] == "googler"]


def test_detect_license_phrases() -> None:
    mit = "MIT License\n\nPermission is hereby granted, free of charge, to any person obtaining"
    mit += " a copy of this software"
    assert github.detect_license(mit) == "MIT"
    bsd2 = "Redistribution and use in source and binary forms, with or without modification"
    assert github.detect_license(bsd2) == "BSD-2-Clause"
    assert github.detect_license(bsd2 + "\n3. Neither the name of X nor") == "BSD-3-Clause"
    apache = "                Apache License\n          Version 2.0, January 2004\n"
    assert github.detect_license(apache) == "Apache-2.0"
    gpl2 = "GNU GENERAL PUBLIC LICENSE\nVersion 2, June 1991"
    assert github.detect_license(gpl2) == "GPL-2.0"
    lgpl = "GNU LESSER GENERAL PUBLIC LICENSE\nVersion 3, 29 June 2007\n... GNU General Public"
    assert github.detect_license(lgpl) == "LGPL-3.0"
    assert github.detect_license("GNU AFFERO GENERAL PUBLIC LICENSE") == "AGPL-3.0"
    assert github.detect_license("All rights reserved. Do not copy.") is None


def test_repo_without_license_or_with_a_copyleft_one_is_dropped(tmp_path: Path) -> None:
    code = _file("norepo/main.py", "def main():\n    return 1\n")
    no_license = _write_tar_gz(tmp_path / "norepo.tar.gz", [code])
    dual = _write_tar_gz(
        tmp_path / "dual.tar.gz",
        [
            _file(
                "dual/LICENSE-MIT",
                "Permission is hereby granted, free of charge, to any person obtaining a copy",
            ),
            _file("dual/COPYING", "GNU GENERAL PUBLIC LICENSE Version 3"),
            _file("dual/main.py", "def main():\n    return 2\n"),
        ],
    )
    run = Run([no_license, dual])
    assert not run.docs
    assert set(run.dropped("license")) == {
        ("norepo", "main.py"),
        ("dual", "LICENSE-MIT"),
        ("dual", "COPYING"),
        ("dual", "main.py"),
    }


# --- file types and quality ---------------------------------------------------------------


def test_binaries_notebooks_and_empty_files_dropped(full_run: Run) -> None:
    binary = full_run.dropped("binary")
    for path in ("moon_mlp.png", "puppy.jpg", "gout.svg"):
        assert ("micrograd", path) in binary
    assert (
        "cJSON",
        "tests/unity/docs/UnityAssertionsCheatSheetSuitableforPrintingandPossiblyFraming.pdf",
    ) in binary
    assert set(full_run.dropped("notebook")) == {
        ("micrograd", "demo.ipynb"),
        ("micrograd", "trace_graph.ipynb"),
    }
    assert ("micrograd", "micrograd/__init__.py") in full_run.dropped("empty")


def test_notebooks_can_be_kept_as_cell_text(sample_dir: Path) -> None:
    opts = github.Options(notebooks=True)
    run = Run([sample_dir / "github" / SAMPLES["micrograd"]], opts)
    text = run.by_path["micrograd", "trace_graph.ipynb"].text
    assert "from graphviz import Digraph" in text
    assert '"cell_type"' not in text


def test_quality_filters_on_real_files(full_run: Run) -> None:
    long_lines = full_run.dropped("long_lines")
    assert ("itsdangerous", "uv.lock") in long_lines  # mean line length 136
    assert ("cJSON", "tests/unity/src/unity.h") in long_lines  # mean line length 131
    low_alnum = full_run.dropped("low_alphanumeric")
    # JSON fuzzing inputs that are brackets and digits: 18% and 21% alphanumeric
    assert set(low_alnum) == {("cJSON", "tests/inputs/test9"), ("cJSON", "fuzzing/inputs/test9")}
    assert all(stage == "quality" for stage in (long_lines | low_alnum).values())
    kept = full_run.by_path
    assert ("cJSON", "cJSON.c") in kept and ("itsdangerous", "src/itsdangerous/signer.py") in kept


def test_quality_reasons() -> None:
    opts = github.Options()
    assert github.quality_reason("x = 1\n" * 10, opts) is None
    assert github.quality_reason("x = 1\n" + "y" * 1001 + "\n", opts) == "long_lines"
    assert github.quality_reason(("z" * 150 + "\n") * 3, opts) == "long_lines"
    assert github.quality_reason("{[ ]}, {[ ]}\n" * 5, opts) == "low_alphanumeric"
    assert github.quality_reason(" \n\n", opts) == "empty"
    generated = "// Code generated by protoc. DO NOT EDIT.\nint x;\n"
    assert github.quality_reason(generated, opts) is None
    assert github.quality_reason(generated, github.Options(drop_autogenerated=True)) == (
        "autogenerated"
    )


# --- boilerplate --------------------------------------------------------------------------


def test_apache_headers_stripped_from_python_fire(full_run: Run) -> None:
    fire = {p: d for (repo, p), d in full_run.by_path.items() if repo == "python-fire"}
    py = [d for p, d in fire.items() if p.endswith(".py")]
    assert len(py) == 55  # 61 .py files, 6 of them empty __init__.py
    for doc in py:
        assert "Licensed under the Apache License" not in doc.text, doc.id
        assert not doc.text.lstrip().startswith("# Copyright"), doc.id
    core = fire["fire/core.py"].text
    assert core.startswith('"""Python Fire is a library for creating CLIs')
    assert "def Fire(component=None, command=None, name=None, serialize=None):" in core
    # a coding declaration stays; only the license block under it goes
    assert fire["fire/console/console_attr.py"].text.startswith("# -*- coding: utf-8 -*- #\n")
    # the repository's own LICENSE file is boilerplate too
    assert ("python-fire", "LICENSE") in full_run.dropped("boilerplate")


def test_c_license_comment_stripped_and_the_next_comment_kept(full_run: Run) -> None:
    text = full_run.by_path["cJSON", "cJSON.c"].text
    assert text.startswith("/* cJSON */\n/* JSON parser in C. */\n")
    assert "Permission is hereby granted" not in text


def test_strip_header_cases() -> None:
    py = "#!/usr/bin/env python\n# Copyright 2020 X\n# SPDX-License-Identifier: MIT\n\nimport os\n"
    assert github.strip_header(py, "Python") == "#!/usr/bin/env python\nimport os\n"
    note = "# This module parses flags.\nimport os\n"
    assert github.strip_header(note, "Python") == note
    go = "// Copyright 2021 The Go Authors.\n// Use of this source code is governed by a license.\n"
    assert github.strip_header(go + "\npackage main\n", "Go") == "package main\n"
    c = "#include <stdio.h>\n/* Copyright 2020 */\nint main(void);\n"
    assert github.strip_header(c, "C") == c  # not at the top: code comes first
    md = "# License\n\nMIT\n"
    assert github.strip_header(md, "Markdown") == md


# --- dedup, damage, formats ---------------------------------------------------------------


def test_exact_duplicates_dropped(full_run: Run, sample_dir: Path, tmp_path: Path) -> None:
    real = full_run.dropped("duplicate")  # Unity's example projects share their sources
    assert ("cJSON", "tests/unity/examples/example_2/src/ProductionCode.h") in real
    assert ("cJSON", "tests/unity/examples/example_1/src/ProductionCode.h") in full_run.by_path

    members = _tar_members(sample_dir / "github" / SAMPLES["micrograd"])
    engine = next(data for info, data in members if info.name == "micrograd/micrograd/engine.py")
    copy = _file("micrograd/copy/engine.py", engine.decode())
    archive = _write_tar_gz(tmp_path / "micrograd-planted.tar.gz", [*members, copy])
    fork = _write_tar_gz(  # another repository with the same file: dedup spans the shard
        tmp_path / "zz-fork.tar.gz",
        [
            next(m for m in members if m[0].name == "micrograd/LICENSE"),
            _file("micrograd/vendored/engine.py", engine.decode()),
        ],
    )
    run = Run([archive, fork])
    dups = run.dropped("duplicate")
    assert ("micrograd", "copy/engine.py") in dups and ("micrograd", "vendored/engine.py") in dups
    assert run.by_path["micrograd", "micrograd/engine.py"].text == engine.decode()


def test_truncated_archive_keeps_what_was_read(sample_dir: Path, tmp_path: Path) -> None:
    source = sample_dir / "github" / SAMPLES["cJSON"]
    truncated = tmp_path / "cJSON-truncated.tar.gz"
    truncated.write_bytes(source.read_bytes()[:150_000])
    fire = sample_dir / "github" / SAMPLES["python-fire"]
    run = Run([truncated, fire])
    assert run.bad_inputs() == [(str(truncated), "truncated")]
    assert run.ctx.stats["read"].dropped["truncated"] == 1
    full = Run([source, fire])
    cjson = [d.metadata["path"] for d in run.docs if d.metadata["repo"] == "cJSON"]
    full_cjson = [d.metadata["path"] for d in full.docs if d.metadata["repo"] == "cJSON"]
    assert 10 < len(cjson) < len(full_cjson)
    assert cjson == full_cjson[: len(cjson)]  # the files before the damage, unchanged
    assert [d.text for d in run.docs if d.metadata["repo"] == "python-fire"] == [
        d.text for d in full.docs if d.metadata["repo"] == "python-fire"
    ]


def test_corrupt_and_empty_archives_reported(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b\x08\x00" + b"\xff" * 600)
    empty = tmp_path / "empty.tar"
    empty.write_bytes(b"")
    run = Run([corrupt, empty])
    assert run.bad_inputs() == [(str(corrupt), "corrupt"), (str(empty), "empty_file")]
    assert not run.docs


def test_zip_archive_reads_like_the_tar(sample_dir: Path, tmp_path: Path) -> None:
    source = sample_dir / "github" / SAMPLES["itsdangerous"]
    zipped = tmp_path / "itsdangerous.zip"
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in _tar_members(source):
            if data is not None:
                zf.writestr(info.name, data)
    from_zip, from_tar = Run([zipped]), Run([source])
    assert [(d.metadata["path"], d.text) for d in from_zip.docs] == [
        (d.metadata["path"], d.text) for d in from_tar.docs
    ]
    truncated = tmp_path / "itsdangerous-truncated.zip"
    truncated.write_bytes(zipped.read_bytes()[:20_000])
    assert Run([truncated]).bad_inputs() == [(str(truncated), "truncated")]


def test_output_is_deterministic_and_documents_carry_metadata(sample_dir: Path) -> None:
    inputs = github.find_inputs(sample_dir, github.Options())
    first, second = Run(inputs), Run(inputs)
    assert [(d.id, d.text, d.metadata) for d in first.docs] == [
        (d.id, d.text, d.metadata) for d in second.docs
    ]
    assert len({d.id for d in first.docs}) == len(first.docs)
    doc = first.by_path["itsdangerous", "src/itsdangerous/signer.py"]
    assert doc.id == "itsdangerous-672971d66a2e/src/itsdangerous/signer.py"
    assert doc.source == "github"
    assert doc.metadata["license"] == "BSD-3-Clause"
    assert (doc.metadata["extension"], doc.metadata["language"]) == (".py", "Python")


def test_shards(sample_dir: Path) -> None:
    inputs = github.find_inputs(sample_dir, github.Options())
    assert github.shards(inputs, github.Options()) == [inputs]
    assert github.shards(inputs, github.Options(archives_per_shard=2)) == [
        inputs[0:2],
        inputs[2:4],
        inputs[4:5],
    ]


def test_archive_without_top_folder(tmp_path: Path) -> None:
    archive = _write_tar_gz(
        tmp_path / "flat-1234.tar.gz",
        [
            _file("./src/app.py", "def app():\n    return 'ok'\n"),
            _file("./.github/ci.yml", "name: ci\non: push\n"),
            _file(
                "./LICENSE.md",
                "# MIT License\n\nPermission is hereby granted, free of "
                "charge, to any person obtaining a copy of this software",
            ),
        ],
    )
    run = Run([archive], github.Options(extensions=None))
    assert sorted(run.by_path) == [("flat-1234", ".github/ci.yml"), ("flat-1234", "src/app.py")]
    assert run.by_path["flat-1234", "src/app.py"].metadata["license"] == "MIT"
    assert run.by_path["flat-1234", "src/app.py"].id == "flat-1234/src/app.py"
