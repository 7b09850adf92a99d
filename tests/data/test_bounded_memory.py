"""Bounded memory on hostile inputs (issue 9): every bomb inflates past 1 GB, and a worker
reading it must stay under 1 GB of peak RSS, count what it cut, and keep the good records.

The bombs are built lazily: compressed ones by repeating one deflate block (a full flush
resets the compressor, so the same bytes decode to the same megabyte each time), so a 1.1 GB
member costs about a megabyte on disk; plain-text ones are sparse files. Each bomb is read by
a fresh worker process (the shard function the build runs, or the source's reader) whose
``ru_maxrss`` is the measure."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import tarfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

MB = 1 << 20
BOMB_MB = 1100  # inflated size of each bomb: past the bound, so reading it whole fails
RSS_LIMIT_MB = 1024
Part = tuple[bytes, int]  # bytes, repeated this many times


def _deflate(parts: list[Part]) -> Iterator[bytes]:
    """Raw deflate of the concatenated parts, each repeat costing one compressed block."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    for data, times in parts:
        block = c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)
        if times > 1:
            again = c.compress(data) + c.flush(zlib.Z_FULL_FLUSH)
            assert again == block  # the compressor restarts from nothing after a full flush
            for _ in range(times - 1):
                yield block
        yield block
    yield c.flush()


def _crc_and_size(parts: list[Part]) -> tuple[int, int]:
    crc, size = 0, 0
    for data, times in parts:
        for _ in range(times):
            crc = zlib.crc32(data, crc)
        size += len(data) * times
    return crc, size


def write_gzip(path: Path, parts: list[Part]) -> Path:
    crc, size = _crc_and_size(parts)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff")
        for block in _deflate(parts):
            f.write(block)
        f.write(struct.pack("<II", crc, size & 0xFFFFFFFF))
    return path


def write_sparse(path: Path, head: bytes, size: int) -> Path:
    """``head`` then zero bytes up to ``size``: no newline, and no disk blocks for the zeros."""
    with open(path, "wb") as f:
        f.write(head)
        f.truncate(size)
    return path


def _tar_header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


MIT = b"""MIT License

Permission is hereby granted, free of charge, to any person obtaining a copy of this
software and associated documentation files (the "Software"), to deal in the Software.
"""
GOOD_C4 = {"text": "A good page.\nIt is kept.", "url": "https://example.com/", "timestamp": "x"}
GOOD_PAGE = (
    "<page><title>{title}</title><ns>0</ns><id>{id}</id><revision><id>{id}</id>"
    '<text xml:space="preserve">{title} is a page that is kept.</text></revision></page>\n'
)


def bomb_c4(root: Path) -> Path:
    line = json.dumps(GOOD_C4).encode() + b"\n"
    parts = [(line + b'{"text": "', 1), (b"a" * MB, BOMB_MB), (b'"}\n' + line, 1)]
    return write_gzip(root / "c4" / "bomb.jsonl.gz", parts)


def bomb_wikipedia(root: Path) -> Path:
    head = '<mediawiki xml:lang="en"><siteinfo><dbname>enwiki</dbname></siteinfo>\n'
    head += GOOD_PAGE.format(title="Alpha", id=1)
    head += "<page><title>Bomb</title><ns>0</ns><id>2</id><revision><id>2</id><text>"
    middle = "</text></revision></page>\n" + GOOD_PAGE.format(title="Gamma", id=3)
    tail = GOOD_PAGE.format(title="Delta", id=4) + "</mediawiki>\n"
    parts = [(head.encode(), 1), (b"a" * MB, BOMB_MB), (middle.encode(), 1)]
    parts += [(b" " * MB, 20), (tail.encode(), 1)]  # 20 MB of whitespace between pages
    return write_gzip(root / "wikipedia" / "enwiki-bomb.xml.gz", parts)


def bomb_arxiv(root: Path) -> Path:
    tex = b"\\documentclass{article}\n\\begin{document}\n\\section{Bomb}\n"
    return write_gzip(root / "arxiv" / "2301.00001.gz", [(tex, 1), (b"a" * MB, BOMB_MB)])


def bomb_github_tar(root: Path) -> Path:
    license_member = _tar_header("repo/LICENSE", len(MIT)) + _padded(MIT)
    code = b"def kept():\n    return 'this file is kept'\n"
    tail = _tar_header("repo/kept.py", len(code)) + _padded(code) + b"\0" * 1024
    parts = [(license_member + _tar_header("repo/huge.py", BOMB_MB * MB), 1)]
    parts += [(b"\0" * MB, BOMB_MB), (tail, 1)]
    return write_gzip(root / "github" / "repo-bomb.tar.gz", parts)


def bomb_github_zip(root: Path) -> Path:
    """A zip whose member ``repo/liar.py`` says it holds 100 bytes and inflates to 1.1 GB."""
    blocks = list(_deflate([(b"a" * MB, BOMB_MB)]))
    comp_size = sum(len(b) for b in blocks)
    entries = [(b"repo/LICENSE", 0, MIT, len(MIT), len(MIT), zlib.crc32(MIT))]
    entries.append((b"repo/liar.py", 8, None, comp_size, 100, 0))
    path = root / "github" / "liar.zip"
    central, offset = b"", 0
    with open(path, "wb") as f:
        for name, method, data, csize, usize, crc in entries:
            header = struct.pack(
                "<4s5H3L2H", b"PK\x03\x04", 20, 0, method, 0, 0x21, crc, csize, usize, len(name), 0
            )
            f.write(header + name)
            if data is not None:
                f.write(data)
            else:
                for block in blocks:
                    f.write(block)
            central += struct.pack(
                "<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, method, 0, 0x21, crc, csize, usize,
                len(name), 0, 0, 0, 0, 0, offset,
            ) + name  # fmt: skip
            offset += len(header) + len(name) + csize
        f.write(central)
        f.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 2, 2, len(central), offset, 0))
    return path


def bomb_books(root: Path) -> Path:
    return write_sparse(root / "books" / "bomb.txt", b"Title: Bomb\n\n", BOMB_MB * MB)


def bomb_wet(root: Path) -> Path:
    head = (
        b"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: https://example.com/\r\n"
        b"Content-Length: 10\r\n\r\nTitle\n"
    )
    return write_sparse(root / "commoncrawl" / "wet" / "bomb.warc.wet", head, BOMB_MB * MB)


# A worker: the shard function the build runs (or the source's reader) on one bomb, in a fresh
# process, reporting its peak RSS, the bytes it read from files, and what it counted.
WORKER = r"""
import json, resource, sys
from collections import Counter
from pathlib import Path
from pasture.config import build
from pasture.data.document import Context
from pasture.data.pipeline import BuildConfig, ShardJob, process_shard
from pasture.data.sources import SOURCES

source, file, root, out, how = sys.argv[1:6]
# A guard for the machine, well above the bound the test asserts.
status = open("/proc/self/status").read()
vm_kb = int(status.split("VmSize:")[1].split()[0])
limit = vm_kb * 1024 + 3 * (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

def rchar():
    return int(open("/proc/self/io").read().split("rchar:")[1].split()[0])

before = rchar()
drops = Counter()
if how == "shard":
    cfg = BuildConfig(workers=1, mixture={source: 1.0})
    result = process_shard(ShardJob(source, 0, (file,), "0" * 64), cfg, root, out)
    for stage in result["stages"].values():
        drops.update(stage["dropped"])
    docs = result["stages"]["read"]["docs_out"]
else:
    module = SOURCES[source]
    ctx = Context("bomb")
    docs = sum(1 for _ in module.read(Path(file), ctx, build(module.Options, {})))
    for stats in ctx.stats.values():
        drops.update(stats.dropped)
read = rchar() - before
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"peak_mb": peak, "read_bytes": read, "drops": drops, "docs": docs}))
"""

CASES = {
    # name: (builder, source, how, reason counted, documents read)
    "c4_line": (bomb_c4, "c4", "shard", "record_too_large", 2),
    "wikipedia_text": (bomb_wikipedia, "wikipedia", "shard", "text_too_large", 4),
    "arxiv_gz": (bomb_arxiv, "arxiv", "shard", "too_large", 0),
    "github_tar_member": (bomb_github_tar, "github", "shard", "too_large", 1),
    "github_zip_liar": (bomb_github_zip, "github", "shard", "corrupt", 0),
    "books_line": (bomb_books, "books", "shard", "too_large", 0),
    "wet_line": (bomb_wet, "commoncrawl", "read", "record_too_large", 0),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_bomb_stays_under_1gb(case: str, tmp_path: Path) -> None:
    builder, source, how, reason, docs = CASES[case]
    root = tmp_path / "in"
    (root / source).mkdir(parents=True)
    (root / "commoncrawl" / "wet").mkdir(parents=True, exist_ok=True)
    bomb = builder(root)
    cmd = [sys.executable, "-c", WORKER, source, str(bomb), str(root), str(tmp_path / "out"), how]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["peak_mb"] < RSS_LIMIT_MB, result
    if case == "github_tar_member":  # inflated once (read once), not once per pass
        assert result["read_bytes"] < 1.5 * bomb.stat().st_size, result
    assert result["drops"].get(reason, 0) >= 1, result
    assert "reader_error" not in result["drops"], result
    assert result["docs"] == docs, result
