"""Pasture against the independent references it follows (issue 10), on the real samples:
TFDS's C4 (``c4_utils``, LDNOOBW at the commit C4 used) and RedPajama-Data v1's GitHub filter."""

from __future__ import annotations

import hashlib
from pathlib import Path

from pasture.data.document import Context, Document, run_steps
from pasture.data.sources import c4, github

# sha256 of LDNOOBW `en` @ 25e679f03d96baa721cde20db9944649e8d0a844 (one entry per line).
LDNOOBW_EN_SHA256 = "a506cbcf8a31935b122299f3bb1d32be6db3d0ad498765d28f365dfc4f4d7b8c"


def test_bad_words_are_the_list_c4_used(shared_data: Path) -> None:
    words = c4.load_bad_words()
    assert len(words) == 377
    assert hashlib.sha256("".join(w + "\n" for w in words).encode()).hexdigest() == (
        LDNOOBW_EN_SHA256
    )
    step = c4.bad_words_step(words)
    pages = ["He said fucking hell.", "What a god damn mess.", "Total bullshit!", "Bitches."]
    pages += ["I was pissed off.", "Scunthorpe is a town.", "Assessment of the class."]
    ctx = Context("test")
    kept = [d.text for d in step((Document(t, str(i), "c4") for i, t in enumerate(pages)), ctx)]
    assert kept == pages[4:]  # whole words and phrases only; "pissed" is not on C4's list
    # Published C4 was filtered with this list: none of its real pages contains an entry.
    opts = c4.Options()
    docs = [
        d for p in c4.find_inputs(shared_data / "pretrain", opts) for d in c4.read(p, ctx, opts)
    ]
    assert len(list(step(iter(docs), ctx))) == len(docs) == 1030


def test_github_keeps_redpajamas_source_extensions(shared_data: Path) -> None:
    opts, everything = github.Options(), github.Options(extensions=None)
    inputs = github.find_inputs(shared_data / "pretrain", opts)

    def run(o: github.Options) -> tuple[list[Document], Context]:
        ctx = Context("test")
        docs = (d for path in inputs for d in github.read(path, ctx, o))
        return list(run_steps(docs, github.steps(o, Path("unused")), ctx)), ctx

    (kept, ctx), (all_kept, _) = run(opts), run(everything)
    assert (len(kept), len(all_kept)) == (227, 321)
    # 94 of the 321 files kept without it are not source files; 11 more were cut later anyway
    assert ctx.stage_stats("read").dropped["extension"] == 105
    paths = [d.metadata["path"] for d in kept]
    assert all(p.endswith(github.REDPAJAMA_EXTENSIONS) for p in paths)
    for name in (".yml", ".json", ".gitignore", ".expected", ".toml"):
        assert not [p for p in paths if p.endswith(name)], name
