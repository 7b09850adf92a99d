"""Build tests/assets/data, the small redistributable subset of the shared data that a bare
clone tests with, and its MANIFEST.md (source, licence and SHA-256 of every file).

    python tests/assets/make_data_subset.py ../shared/data

Files keep their paths in the full set. Each is either a byte-identical copy ("copy") or the
first N records of the full file, written in the full file's own serialization ("first N").
Only files whose licence allows redistribution are taken; see MANIFEST.md for what is left out.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data"

MIT_LLAMA2C = "MIT (karpathy/llama2.c `LICENSE`, copied beside it)"
# relative path -> (records to keep, or None for a whole copy; licence; source)
FILES: dict[str, tuple[int | None, str, str]] = {
    # models: only llama2.c's MIT files. Meta's tokenizer (and the GGUF fixture that embeds
    # its vocabulary) is under the Llama 2 Community License, which binds redistributors.
    "models/MANIFEST.md": (None, "Pasture project documentation", "the full set's manifest"),
    "models/stories260K/stories260K.bin": (None, MIT_LLAMA2C, "ytmytm/llama2.c64 @ 12b5bec8"),
    "models/stories260K/tok512.bin": (None, MIT_LLAMA2C, "ytmytm/llama2.c64 @ 12b5bec8"),
    "models/stories260K/tok512.model": (None, MIT_LLAMA2C, "pure-water/llama2.c @ cba85b7c"),
    "models/stories260K/tok512.vocab": (None, MIT_LLAMA2C, "pure-water/llama2.c @ cba85b7c"),
    "models/stories260K/LICENSE-llama2.c.txt": (None, "MIT", "karpathy/llama2.c @ 350e04fe"),
    # eval: a slice of each benchmark whose data licence allows it (not SIQA: none stated;
    # not MBPP: its reader requires all 974 problems, 564 kB)
    "eval/MANIFEST.md": (None, "Pasture project documentation", "the full set's manifest"),
    "eval/arc/ARC-Easy-Test.jsonl": (
        20,
        "CC BY-SA 4.0 (AI2's ARC page)",
        "allenai/aristo-leaderboard + rebuilt, see eval/MANIFEST.md",
    ),
    "eval/arc/ARC-Challenge-Test.jsonl": (
        20,
        "CC BY-SA 4.0 (AI2's ARC page)",
        "zhouqb/order_dependency_problem @ c78952c0 + rebuilt",
    ),
    "eval/boolq/dev.jsonl": (
        20,
        "CC BY-SA 3.0 (google-research-datasets/boolean-questions)",
        "d-eremeev/BoolQ-Question-Answering @ 72c34785 : data/dev.jsonl",
    ),
    "eval/piqa/valid.jsonl": (
        20,
        "Academic Free License v3.0 (piqa/README.md)",
        "ybisk/ybisk.github.io @ 21edab43 : piqa/data/valid.jsonl",
    ),
    "eval/piqa/valid-labels.lst": (
        20,
        "Academic Free License v3.0",
        "ybisk/ybisk.github.io @ 21edab43 : piqa/data/valid-labels.lst",
    ),
    "eval/winogrande/dev.jsonl": (
        20,
        "CC-BY (as the dataset is listed; the repository states none)",
        "zhang-edward/WinoGrande @ ea61adac : data/dev.jsonl",
    ),
    "eval/winogrande/dev-labels.lst": (
        20,
        "CC-BY (as above)",
        "zhang-edward/WinoGrande @ ea61adac : data/dev-labels.lst",
    ),
    "eval/winogrande/LICENSE.allenai-winogrande-repo": (
        None,
        "Apache-2.0",
        "allenai/winogrande @ 727e837f",
    ),
    "eval/openbookqa/test.jsonl": (
        20,
        "Apache-2.0 (allenai/OpenBookQA)",
        "katulevskiy/NLP-OpenBookQA @ eac0c145 : OpenBookQA-V1-Sep2018/Data/Main/test.jsonl",
    ),
    "eval/openbookqa/test_complete.jsonl": (
        20,
        "Apache-2.0 (allenai/OpenBookQA)",
        "katulevskiy/NLP-OpenBookQA @ eac0c145 : …/Data/Additional/test_complete.jsonl",
    ),
    "eval/openbookqa/LICENSE.allenai-OpenBookQA-repo": (
        None,
        "Apache-2.0",
        "allenai/OpenBookQA @ b5197164",
    ),
    "eval/mmlu/README.txt": (
        None,
        "MIT (hendrycks/test)",
        "raybears/cot-transparency @ 37258914 : data/mmlu/",
    ),
    "eval/gsm8k/test.jsonl": (
        20,
        "MIT",
        "openai/grade-school-math @ 3101c7d5 : grade_school_math/data/test.jsonl",
    ),
    "eval/gsm8k/LICENSE": (None, "MIT", "openai/grade-school-math @ 3101c7d5"),
    "eval/math/test.jsonl": (
        20,
        "MIT (hendrycks/math)",
        "LightChen233/ECM @ aac9ae2f : data/math/test.jsonl",
    ),
    "eval/humaneval/HumanEval.jsonl.gz": (
        20,
        "MIT",
        "openai/human-eval @ 6d43fb98 : data/HumanEval.jsonl.gz",
    ),
    "eval/humaneval/LICENSE": (None, "MIT", "openai/human-eval @ 6d43fb98"),
    "eval/nq_open/NQ-open.dev.jsonl": (
        80,  # 64-shot needs 64 examples besides the item
        "CC BY-SA 3.0 (nq_open/README.md)",
        "google-research-datasets/natural-questions @ fb26a307 : nq_open/NQ-open.dev.jsonl",
    ),
    "eval/nq_open/LICENSE": (
        None,
        "Apache-2.0",
        "google-research-datasets/natural-questions @ fb26a307",
    ),
    "eval/triviaqa/triviaqa_sample.json": (
        None,
        "Apache-2.0",
        "mandarjoshi90/triviaqa @ ca43b582 : samples/triviaqa_sample.json",
    ),
    "eval/triviaqa/LICENSE": (None, "Apache-2.0", "mandarjoshi90/triviaqa @ ca43b582"),
    "eval/truthfulqa/data/v1/mc_task.json": (
        20,
        "Apache-2.0",
        "sylinrl/TruthfulQA via koppula/TruthfulQA @ d71c1108 : data/v1/mc_task.json",
    ),
    "eval/truthfulqa/data/v1/TruthfulQA.csv": (
        20,
        "Apache-2.0",
        "sylinrl/TruthfulQA via koppula/TruthfulQA @ d71c1108 : data/v1/TruthfulQA.csv",
    ),
    "eval/truthfulqa/LICENSE": (None, "Apache-2.0", "sylinrl/TruthfulQA"),
    "eval/crows_pairs/crows_pairs_anonymized.csv": (
        20,
        "CC BY-SA 4.0 (repository README)",
        "nyu-mll/crows-pairs @ 8aaac11c : data/crows_pairs_anonymized.csv",
    ),
    "eval/winogender/all_sentences.tsv": (
        None,
        "MIT",
        "rudinger/winogender-schemas @ 1c7f8b48 : data/",
    ),
    "eval/winogender/templates.tsv": (
        None,
        "MIT",
        "rudinger/winogender-schemas @ 1c7f8b48 : data/",
    ),
    "eval/winogender/occupations-stats.tsv": (
        None,
        "MIT",
        "rudinger/winogender-schemas @ 1c7f8b48 : data/",
    ),
    "eval/winogender/LICENSE": (None, "MIT", "rudinger/winogender-schemas @ 1c7f8b48"),
    "eval/realtoxicityprompts/decodingtrust_user_prompts/toxic.jsonl": (
        20,
        "CC BY-SA 4.0 (DecodingTrust)",
        "AI-secure/DecodingTrust @ 161ae832 : data/toxicity/user_prompts/",
    ),
    "eval/realtoxicityprompts/decodingtrust_user_prompts/nontoxic.jsonl": (
        20,
        "CC BY-SA 4.0 (DecodingTrust)",
        "AI-secure/DecodingTrust @ 161ae832 : data/toxicity/user_prompts/",
    ),
    "eval/realtoxicityprompts/decodingtrust_user_prompts/LICENSE.AI-secure-DecodingTrust-repo": (
        None,
        "CC BY-SA 4.0",
        "AI-secure/DecodingTrust @ 161ae832",
    ),
    # pretrain: whole raw files, only where the content itself is licensed for redistribution
    # (no third-party web pages: the Common Crawl excerpts and Dolma/RedPajama text stay out)
    "pretrain/MANIFEST.md": (None, "Pasture project documentation", "the full set's manifest"),
    "pretrain/commoncrawl/wet/ccnet_test_sample.warc.wet": (
        None,
        "MIT (hand-written text)",
        "facebookresearch/cc_net @ bda555bd : tests/data/sample.warc.txt",
    ),
    "pretrain/commoncrawl/wet/LICENSE-cc_net.txt": (
        None,
        "MIT",
        "facebookresearch/cc_net @ bda555bd",
    ),
    "pretrain/commoncrawl/wet/CC-MAIN-2024-22_whirlwind.warc.wet.gz": (
        None,
        "Apache-2.0 repository; the page is Wikipedia's, CC BY-SA",
        "commoncrawl/whirlwind-python @ 08dcfbe4 : whirlwind.warc.wet.gz",
    ),
    "pretrain/commoncrawl/warc/CC-MAIN-2024-22_whirlwind.warc.gz": (
        None,
        "as above",
        "commoncrawl/whirlwind-python @ 08dcfbe4 : whirlwind.warc.gz",
    ),
    "pretrain/commoncrawl/wat/CC-MAIN-2024-22_whirlwind.warc.wat.gz": (
        None,
        "as above",
        "commoncrawl/whirlwind-python @ 08dcfbe4 : whirlwind.warc.wat.gz",
    ),
    "pretrain/commoncrawl/LICENSE-whirlwind-python.txt": (
        None,
        "Apache-2.0",
        "commoncrawl/whirlwind-python",
    ),
    "pretrain/c4/olmo_c4-sample.01.json.gz": (
        None,
        "ODC-BY (AllenAI C4); repository Apache-2.0",
        "allenai/OLMo @ 59a53e3f : test_fixtures/",
    ),
    "pretrain/c4/olmo_c4-sample.02.json.gz": (
        None,
        "as above",
        "allenai/OLMo @ 59a53e3f : test_fixtures/",
    ),
    "pretrain/c4/olmo_c4-sample.03.json.gz": (
        None,
        "as above",
        "allenai/OLMo @ 59a53e3f : test_fixtures/",
    ),
    "pretrain/c4/LICENSE-OLMo.txt": (None, "Apache-2.0", "allenai/OLMo @ 59a53e3f"),
    "pretrain/github/micrograd-c911406e5ace.tar.gz": (
        None,
        "MIT (LICENSE inside)",
        "git archive of karpathy/micrograd @ c911406e",
    ),
    "pretrain/github/itsdangerous-672971d66a2e.tar.gz": (
        None,
        "BSD-3-Clause (LICENSE.txt inside)",
        "git archive of pallets/itsdangerous @ 672971d6",
    ),
    "pretrain/github/python-fire-716bbc23d7ec.tar.gz": (
        None,
        "Apache-2.0 (LICENSE inside)",
        "git archive of google/python-fire @ 716bbc23",
    ),
    "pretrain/github/googler-f55837974ae0.tar.gz": (
        None,
        "GPL-3.0 (LICENSE inside; complete source)",
        "git archive of jarun/googler @ f5583797",
    ),
    "pretrain/wikipedia/bgwiki-latest-pages-articles-shortened.xml.bz2": (
        None,
        "CC BY-SA / GFDL (Wikimedia)",
        "piskvorky/gensim @ 37f90ec1 : gensim/test/test_data/",
    ),
    "pretrain/wikipedia/enwiki-table-markup.xml.bz2": (
        None,
        "CC BY-SA / GFDL (Wikimedia)",
        "piskvorky/gensim @ 37f90ec1 : gensim/test/test_data/",
    ),
    "pretrain/wikipedia/LICENSE-gensim-COPYING.txt": (
        None,
        "LGPL-2.1",
        "piskvorky/gensim @ 37f90ec1",
    ),
    "pretrain/books/gutenberg/972.txt": (
        None,
        "public domain in the USA; Project Gutenberg License (in the file)",
        "GITenberg/The-Devil-s-Dictionary_972 @ fcea6b97",
    ),
    "pretrain/books/gutenberg/9198-8.txt": (
        None,
        "as above",
        "GITenberg/The-Complete-Angler-1653_9198 @ 3e96ba0d",
    ),
    "pretrain/books/gutenberg/LICENSE-GITenberg.txt": (
        None,
        "Project Gutenberg License",
        "GITenberg",
    ),
    "pretrain/arxiv/tex/1707.08043/main.tex": (
        None,
        "CC BY 4.0",
        "arxiv-vanity/engrafo @ cb14a8bb : tests/integration/papers/1707.08043/",
    ),
    "pretrain/arxiv/tex/1707.08043/README.md": (None, "CC BY 4.0", "as above"),
    "pretrain/arxiv/tex/1708.00137/main.tex": (
        None,
        "CC BY 4.0",
        "arxiv-vanity/engrafo @ cb14a8bb : tests/integration/papers/1708.00137/",
    ),
    "pretrain/arxiv/tex/1708.00137/README.md": (None, "CC BY 4.0", "as above"),
    "pretrain/arxiv/tex/LICENSE-engrafo.txt": (
        None,
        "Apache-2.0",
        "arxiv-vanity/engrafo @ cb14a8bb",
    ),
    "pretrain/arxiv/eprint/1801.03879-1.tar.gz": (
        None,
        "CC BY 3.0 (stated in the paper, LIPIcs)",
        "arXiv/arxiv-filemanager @ dfb71a40 : tests/test_files_upload/1801.03879-1.tar.gz",
    ),
    "pretrain/stackexchange/coffee.stackexchange.com/Posts.xml": (
        None,
        "CC BY-SA 3.0 (Stack Exchange data dump)",
        "Yoav-Shafir/Elasticsearch-Coffee-Search-Engine-JS @ 97e93c92 : Posts.xml",
    ),
}
MMLU = ("MIT (hendrycks/test)", "raybears/cot-transparency @ 37258914 : data/mmlu/")

LEFT_OUT = """\
## Left out

- Meta's LLaMA tokenizer (`models/llama-tokenizer/`) and the GGUF fixture that embeds its
  vocabulary (`models/llama-2-tiny-random-gguf/`): Llama 2 Community License, whose terms bind
  whoever redistributes it.
- SIQA: no licence stated for the data. MBPP: its reader requires all 974 problems (564 kB).
- CommonCrawl WARC excerpt, Dolma and RedPajama CC text, C4's first 1,000 pages: third-party web
  pages (Common Crawl terms of use), and large.
- arXiv e-prints under arXiv's default licence or CC BY-NC-ND; the large ones.
- Everything else over the size budget (Wikipedia en/de/uk/ja dumps, four Gutenberg books,
  beer.stackexchange.com, cJSON, the other benchmark records).

Tests that need these run where the full set is present (CI) and are skipped in a bare clone.
"""


def mmlu_files(full: Path) -> dict[str, tuple[int | None, str, str]]:
    files = {}
    for path in sorted((full / "eval" / "mmlu" / "dev").glob("*_dev.csv")):
        files[f"eval/mmlu/dev/{path.name}"] = (None, *MMLU)
    for path in sorted((full / "eval" / "mmlu" / "test").glob("*_test.csv")):
        # the lm-eval cross-check reads 20 items of these two subjects
        n = 20 if path.name in ("abstract_algebra_test.csv", "global_facts_test.csv") else 10
        files[f"eval/mmlu/test/{path.name}"] = (n, *MMLU)
    return files


def _csv_head(text: str, n: int) -> str:
    """The first ``n`` records of a CSV text (records may span lines), as written."""
    lines = text.splitlines(keepends=True)
    taken = 0

    def feed() -> Iterator[str]:
        nonlocal taken
        for line in lines:
            taken += 1
            yield line

    reader = csv.reader(feed())
    for _ in range(n):
        if next(reader, None) is None:
            break
    return "".join(lines[:taken])


def head(path: Path, n: int) -> bytes:
    """The first ``n`` records of ``path`` in the file's own serialization."""
    name = path.name
    if name.endswith(".gz"):
        text = gzip.decompress(path.read_bytes()).decode("utf-8")
        kept = "".join(text.splitlines(keepends=True)[:n]).encode("utf-8")
        return gzip.compress(kept, compresslevel=9, mtime=0)
    if name == "mc_task.json":  # a JSON list, indent 2, ASCII escapes, no final newline
        return json.dumps(json.loads(path.read_bytes())[:n], indent=2).encode("ascii")
    if name == "sanitized-mbpp.json":  # one line, json.dumps defaults
        return json.dumps(json.loads(path.read_bytes())[:n]).encode("ascii")
    text = path.read_bytes().decode("utf-8")
    if name.endswith(".csv"):
        header = name == "TruthfulQA.csv" or name == "crows_pairs_anonymized.csv"
        return _csv_head(text, n + header).encode("utf-8")
    return "".join(text.splitlines(keepends=True)[:n]).encode("utf-8")


def build(full: Path) -> None:
    files = {**FILES, **mmlu_files(full)}
    if OUT.exists():
        shutil.rmtree(OUT)
    rows = []
    for rel, (n, licence, source) in sorted(files.items()):
        src, dst = full / rel, OUT / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        data = src.read_bytes() if n is None else head(src, n)
        dst.write_bytes(data)
        taken = "copy" if n is None else f"first {n}"
        digest = hashlib.sha256(data).hexdigest()
        rows.append(f"| `{rel}` | {len(data)} | {digest} | {taken} | {licence} | {source} |")
    total = sum((OUT / rel).stat().st_size for rel in files)
    text = [
        "# Test data subset",
        "",
        "A small part of the shared data (`../shared/data`) that the tests run on in a bare clone.",
        f"{len(files)} files, {total:,} bytes. Built by `python tests/assets/make_data_subset.py",
        '../shared/data`. Every file has its path in the full set; "copy" is byte-identical to',
        'the full set\'s file, "first N" holds its first N records (lines; CSV records; JSON list',
        "items) in the same serialization. Sources (`owner/repo @ commit : path`) and licences are",
        "detailed in the full set's manifests, copied here as `models/`, `eval/` and",
        "`pretrain/MANIFEST.md` (they also describe files that are not in this subset).",
        "",
        "| file | bytes | sha256 | taken | licence | source |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        LEFT_OUT,
    ]
    (OUT / "MANIFEST.md").write_text("\n".join(text))


if __name__ == "__main__":
    build(Path(sys.argv[1]))
