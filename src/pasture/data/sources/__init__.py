"""One module per raw source of the paper's mixture (§2.1, Table 1).

Each module defines the same five things, and nothing else is needed to add a source:

    NAME: str                                   # the source's name in configs and reports
    Options                                     # a dataclass; defaults are the paper's settings
    find_inputs(root: Path, opts) -> list[Path] # the raw files under root/NAME, sorted
    shards(inputs: list[Path], opts) -> list[list[Path]]  # files processed together (dedup scope)
    read(path: Path, ctx: Context, opts) -> Iterator[Document]
    prepare(opts, input_root: Path, work_dir: Path) -> None   # once per build (train models)
    steps(opts, work_dir: Path) -> list[Step]   # the processing after reading, in order
"""

from types import ModuleType

from . import arxiv, books, c4, commoncrawl, github, stackexchange, wikipedia

# Table 1's order.
SOURCES: dict[str, ModuleType] = {
    m.NAME: m for m in (commoncrawl, c4, github, wikipedia, books, arxiv, stackexchange)
}
