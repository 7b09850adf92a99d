"""`pasture data build` on hostile and careless input trees (issue 9): links out of the input
root, names that are not UTF-8, records that break parsers, bad `--out` folders, and resume
after the input set changed. Each build reads a few real sample files plus the planted ones."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from pasture.data.pipeline import BuildConfig, build_dataset
from pasture.errors import PastureError

REPO = Path(__file__).resolve().parents[2]
SECRET = "PASTURE-SECRET-7f3a: this text lies outside the input root"


def _config(**mixture: float) -> BuildConfig:
    return BuildConfig(
        workers=1,
        mixture=mixture,
        sources={"stackexchange": {"sites": ["*"]}},
    )


def _tokenizer(shared_data: Path) -> str:
    return str(shared_data / "models" / "llama-tokenizer" / "tokenizer.model")


def _copy(shared_data: Path, root: Path, *rels: str) -> None:
    for rel in rels:
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared_data / "pretrain" / rel, target)


def _drops(report: dict, source: str) -> Counter:
    out: Counter = Counter()
    for stage in report["sources"][source]["stages"].values():
        out.update(stage["dropped"])
    return out


def _ids(out: Path) -> set[str]:
    """The ids of every document written: kept ones, and dropped ones (write_dropped)."""
    ids = set()
    paths = [*(out / "documents").rglob("*.jsonl.gz"), *(out / "dropped").glob("*.jsonl.gz")]
    for path in paths:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            ids |= {json.loads(line).get("id") for line in f}
    return ids


def _documents(out: Path) -> str:
    text = []
    for path in sorted((out / "documents").rglob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            text.append(f.read())
    return "".join(text)


def test_links_out_of_the_input_root_are_not_followed(shared_data: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.tex").write_text(f"\\section{{Secret}}\n{SECRET}\n")
    (outside / "leak.jsonl").write_text(json.dumps({"text": SECRET, "url": "x"}) + "\n")
    (outside / "site").mkdir()
    (outside / "site" / "Posts.xml").write_text(
        '<posts><row Id="1" PostTypeId="1" Title="T" Body="' + SECRET + '" /></posts>'
    )
    root = tmp_path / "in"
    _copy(shared_data, root, "arxiv/tex/1707.08043/main.tex", "c4/olmo_c4-sample.01.json.gz")
    _copy(shared_data, root, "stackexchange/coffee.stackexchange.com/Posts.xml")
    paper = root / "arxiv" / "tex" / "1707.08043"
    main = paper / "main.tex"
    tex = main.read_bytes().replace(b"\\end{document}", b"\\input{secret}\n\\end{document}")
    main.write_bytes(tex)
    (paper / "secret.tex").symlink_to(outside / "secret.tex")
    (root / "c4" / "leak.jsonl").symlink_to(outside / "leak.jsonl")
    (root / "stackexchange" / "leak.stackexchange.com").symlink_to(outside / "site")
    out = tmp_path / "out"
    report = build_dataset(
        _config(arxiv=1, c4=1, stackexchange=1), root, out, tokenizer=_tokenizer(shared_data)
    )
    assert SECRET not in _documents(out)
    for source in ("arxiv", "c4", "stackexchange"):
        assert _drops(report, source)["symlink_outside_root"] == 1, source
    assert report["sources"]["arxiv"]["documents"] == 1  # the paper itself is still built


def _tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("repo/passwd.py")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
        hard = tarfile.TarInfo("repo/hard.py")
        hard.type, hard.linkname = tarfile.LNKTYPE, "repo/main.py"
        tf.addfile(hard)
        dev = tarfile.TarInfo("repo/null")
        dev.type = tarfile.CHRTYPE
        tf.addfile(dev)
    return gzip.compress(buf.getvalue(), mtime=0)


def test_one_bad_file_or_record_never_stops_a_build(shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "in"
    _copy(shared_data, root, "c4/olmo_c4-sample.01.json.gz", "books/gutenberg/972.txt")
    _copy(shared_data, root, "stackexchange/coffee.stackexchange.com/Posts.xml")
    c4_dir, gh_dir = root / "c4", root / "github"
    gh_dir.mkdir()
    raw_root = os.fsencode(root)
    # A file name that is not UTF-8 (bytes 0xff 0xfe), with two good pages in it.
    page = (shared_data / "pretrain" / "c4" / "olmo_c4-sample.02.json.gz").read_bytes()
    with open(os.path.join(raw_root, b"c4", b"caf\xe9-\xff\xfe.json.gz"), "wb") as f:
        f.write(page)
    # Invalid UTF-8 in one line, a line nested 200,000 deep, good lines around them.
    with gzip.open(c4_dir / "olmo_c4-sample.01.json.gz") as f:
        good = [json.loads(line) for line in f][:3]
    lines = [json.dumps(good[0]).encode(), b'{"text": "caf\xe9 \xff bad", "url": "u"}']
    lines += [b"[" * 200_000, json.dumps(good[1]).encode(), json.dumps(good[2]).encode()]
    (c4_dir / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (c4_dir / "loop.jsonl").symlink_to("loop.jsonl")  # ELOOP
    (c4_dir / "empty.jsonl").write_bytes(b"")
    (root / "books" / "gutenberg" / "empty.txt").write_bytes(b"")
    # A non-integer question Id among the real rows.
    posts = root / "stackexchange" / "coffee.stackexchange.com" / "Posts.xml"
    xml = posts.read_bytes().replace(
        b"</posts>", b'  <row Id="abc" PostTypeId="1" Title="Bad" Body="x" />\n</posts>'
    )
    posts.write_bytes(xml)
    # A tar member name that is not UTF-8, and members that are links and devices.
    mit = (shared_data / "pretrain" / "github" / "micrograd-c911406e5ace.tar.gz").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(mit)) as tf:
        license_text = tf.extractfile("micrograd/LICENSE").read()
    members = {
        "repo/LICENSE": license_text,
        "repo/main.py": b"def main():\n    return 'ok'\n",
        os.fsdecode(b"repo/na\xefve-\xff.py"): b"def naive():\n    return 42\n",
    }
    (gh_dir / "repo.tar.gz").write_bytes(_tar_gz(members))

    out = tmp_path / "out"
    cfg = _config(c4=1, books=1, stackexchange=1, github=1)
    cfg.write_dropped = True
    report = build_dataset(cfg, root, out, tokenizer=_tokenizer(shared_data))

    c4 = _drops(report, "c4")
    assert c4["symlink_loop"] == 1 and c4["empty_file"] == 1
    assert c4["bad_encoding"] == 1 and c4["malformed_record"] == 1
    ids = _ids(out)
    # The lines around the bad ones are read (kept, or dropped by a filter with its reason).
    assert {"mixed.jsonl/0", "mixed.jsonl/3", "mixed.jsonl/4"} <= ids
    assert "caf\\xe9-\\xff\\xfe.json.gz/0" in ids  # a non-UTF-8 name, made printable
    read = report["sources"]["c4"]["stages"]["read"]
    assert read["docs_out"] == 10 + 10 + 3  # sample.01, the non-UTF-8-named copy, mixed.jsonl
    assert _drops(report, "books")["empty_file"] == 1
    assert _drops(report, "stackexchange")["malformed_record"] == 1
    assert report["sources"]["stackexchange"]["stages"]["read"]["docs_out"] == 225
    github = _drops(report, "github")
    assert github["link_member"] == 2 and github["special_member"] == 1
    assert {"repo/main.py", "repo/na\\xefve-\\xff.py"} <= ids


def test_bad_out_folders_fail_in_one_line_before_any_work(
    shared_data: Path, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    _copy(shared_data, root, "c4/olmo_c4-sample.01.json.gz")
    cfg, tok = _config(c4=1), _tokenizer(shared_data)
    for out in (root, root / "c4" / "out", root / "runs"):
        with pytest.raises(PastureError, match="inside --input-root"):
            build_dataset(cfg, root, out, tokenizer=tok)
    assert not (root / "runs").exists() and not (root / "c4" / "out").exists()
    existing = tmp_path / "a-file"
    existing.write_text("mine")
    with pytest.raises(PastureError, match="exists and is not a folder"):
        build_dataset(cfg, root, existing, tokenizer=tok)
    assert existing.read_text() == "mine"


@contextmanager
def _read_only_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder nobody may write into: mode 0555, or immutable when we are root (root ignores
    modes), or sysfs where the filesystem cannot say immutable."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        yield Path("/sys/kernel")


@pytest.mark.slow
def test_read_only_out_is_one_line_exit_2(shared_data: Path, tmp_path: Path) -> None:
    with _read_only_folder(tmp_path) as out:
        before = sorted(out.iterdir())
        cmd = [sys.executable, "-m", "pasture.cli", "data", "build", "--input-root"]
        cmd += [str(shared_data / "pretrain"), "--out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"pasture: error: {out}: cannot write")
        assert sorted(out.iterdir()) == before


WIKI = ("enwiki-table-markup.xml.bz2", "dewiki-20170701-sample.xml")


def _markers(out: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in (out / "done").glob("*.json")}


@pytest.mark.slow
def test_resume_redoes_exactly_the_shards_whose_inputs_changed(
    shared_data: Path, tmp_path: Path
) -> None:
    root = tmp_path / "in"
    _copy(shared_data, root, *(f"wikipedia/{name}" for name in WIKI))
    out, tok, cfg = tmp_path / "out", _tokenizer(shared_data), _config(wikipedia=1)
    first = build_dataset(cfg, root, out, tokenizer=tok)
    before = _markers(out)
    # A dump that sorts first: positions shift, but the two old shards are the same shards.
    _copy(shared_data, root, "wikipedia/bgwiki-latest-pages-articles-shortened.xml.bz2")
    second = build_dataset(cfg, root, out, tokenizer=tok)
    after = _markers(out)
    assert {k: v for k, v in after.items() if k in before} == before  # reused, not redone
    assert len(after) == len(before) + 2  # the new dump's docs and tokens markers
    fresh = build_dataset(cfg, root, tmp_path / "fresh", tokenizer=tok)
    tokens = second["sources"]["wikipedia"]["tokens"]
    assert (
        tokens == fresh["sources"]["wikipedia"]["tokens"] > first["sources"]["wikipedia"]["tokens"]
    )
    # A changed input (same name, new content) redoes its shard; a removed one leaves no output.
    dump = root / "wikipedia" / WIKI[1]
    dump.write_bytes(dump.read_bytes().replace(b"</page>", b"</page>\n", 1))
    (root / "wikipedia" / WIKI[0]).unlink()
    third = build_dataset(cfg, root, out, tokenizer=tok)
    assert third["sources"]["wikipedia"]["shards"] == 2
    assert len(list((out / "tokens" / "wikipedia").glob("*.bin"))) == 2
    assert len(list((out / "done").glob("*.json"))) == 4
    assert _markers(out).keys() & before.keys() == set()  # both old shards are gone or redone
