"""The in-memory checkpoint every format reads into and writes from.

Weights are held under Meta's keys (``tok_embeddings.weight``, ``layers.0.attention.wq.weight``,
…, ``output.weight``) in Meta's rotary layout (interleaved pairs); each format module converts
at its boundary. Writers go through ``check_folder``/``folder_writer`` or ``check_file`` and
``pasture.files``: never replace what Pasture did not write, never leave a half-written file.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.tokenizer import Tokenizer
from ..errors import PastureError
from ..files import atomic_dir, atomic_file
from ..model import ModelArgs, Transformer, state_dict_shapes


@dataclass
class Checkpoint:
    args: ModelArgs
    state_dict: dict[str, torch.Tensor]
    tokenizer: Tokenizer | None = None
    source: str = ""  # the path it was read from, for error messages
    format: str = ""
    metadata: dict[str, object] = field(default_factory=dict)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        return state_dict_shapes(self.args)

    def validate(self) -> None:
        """Every key the config implies is present with its shape; nothing else is.

        Computed from the config, never by building the model, and the layer count is checked
        against the tensors present first: a header claiming 10^9 layers costs nothing.
        """
        where = self.source or "checkpoint"
        state = dict(self.state_dict)
        if self.args.tie_embeddings:
            state.pop("output.weight", None)
        if 9 * self.args.n_layers > len(state):
            raise PastureError(
                f"{where}: the config says n_layers={self.args.n_layers:,}, but the checkpoint "
                f"holds only {len(state)} tensors (9 per layer)"
            )
        expected = self.expected_shapes()
        if self.args.tie_embeddings:
            expected.pop("output.weight", None)
        missing = sorted(set(expected) - set(state))
        if missing:
            raise PastureError(f"{where}: missing tensor {missing[0]} ({len(missing)} missing)")
        unexpected = sorted(set(state) - set(expected))
        if unexpected:
            raise PastureError(f"{where}: unexpected tensor {unexpected[0]} for this config")
        for key, shape in expected.items():
            if tuple(state[key].shape) != shape:
                raise PastureError(
                    f"{where}: tensor {key} has shape {tuple(state[key].shape)}, "
                    f"the config implies {shape}"
                )
            if not state[key].is_floating_point():
                raise PastureError(
                    f"{where}: tensor {key} has dtype {state[key].dtype}, not a float type"
                )
        if self.tokenizer is not None and self.tokenizer.vocab_size != self.args.vocab_size:
            raise PastureError(
                f"{where}: tokenizer has {self.tokenizer.vocab_size} tokens, "
                f"the model's vocab is {self.args.vocab_size}"
            )

    def to_model(self, device: torch.device | str = "cpu", dtype: torch.dtype | None = None):
        """A ``Transformer`` holding these weights (built on meta, so no double allocation)."""
        self.validate()
        with torch.device("meta"):
            model = Transformer(self.args)
        state = {k: v for k, v in self.state_dict.items()}
        if self.args.tie_embeddings:
            state.pop("output.weight", None)
        model.load_state_dict(state, strict=not self.args.tie_embeddings, assign=True)
        if self.args.tie_embeddings:
            model.output.weight = model.tok_embeddings.weight
        return model.to(device=device, dtype=dtype).eval()

    @classmethod
    def from_model(cls, model: Transformer, tokenizer: Tokenizer | None = None) -> Checkpoint:
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        return cls(args=model.args, state_dict=state, tokenizer=tokenizer)


@dataclass(frozen=True)
class FolderLayout:
    """The files a folder format writes, so a write replaces those and touches nothing else.

    ``files`` matches every name the format owns: what Pasture writes, plus files of the same
    format that Pasture's reader would take instead of them (a stale shard index). ``marker``
    (e.g. ``config.json``) must be present and satisfy ``recognizes`` for a folder to count as a
    checkpoint of this format.
    """

    label: str
    marker: str
    files: re.Pattern[str]
    recognizes: Callable[[Path], bool]

    def owns(self, name: str) -> bool:
        leftover = _LEFTOVER.fullmatch(name)  # the temporary of a write that was killed
        return bool(self.files.fullmatch(leftover["name"] if leftover else name))


# pasture.files names a temporary ".NAME.RANDOM.tmp" beside its target.
_LEFTOVER = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]+\.tmp")


def check_folder(path: Path, layout: FolderLayout, force: bool) -> None:
    """Refuse to write ``layout``'s files at ``path`` where that could lose a user's data.

    Allowed: a new or empty folder, or a folder that holds only this format's files (a
    checkpoint Pasture wrote). Anything else needs ``force``, and even then only the format's
    own files are replaced; a file where the folder should be is never replaced.
    """
    if path.is_symlink() and not path.exists():
        raise PastureError(f"{path}: a broken symbolic link; remove it or choose another name")
    if not path.exists():
        return
    if not path.is_dir():
        raise PastureError(
            f"{path}: exists and is not a folder; a {layout.label} checkpoint is a folder "
            "(choose another name)"
        )
    entries = sorted(path.iterdir())
    for entry in entries:
        if layout.owns(entry.name) and entry.is_dir():
            raise PastureError(f"{entry}: a folder where the {layout.label} file should go")
    if not entries or force:
        return
    foreign = [e.name for e in entries if not layout.owns(e.name)]
    if foreign:
        problem = f"holds {foreign[0]!r}, which Pasture does not write for {layout.label}"
    elif not layout.recognizes(path / layout.marker):
        problem = f"is not a {layout.label} checkpoint (no valid {layout.marker})"
    else:
        return
    raise PastureError(
        f"{path}: not empty and {problem}; choose a new or empty folder, or pass --force to "
        f"write the {layout.label} files into it and keep everything else"
    )


@contextmanager
def folder_writer(path: Path, layout: FolderLayout) -> Iterator[Callable[[str], Path]]:
    """Yield ``place(name)``: where to write the file ``name`` of the checkpoint at ``path``.

    A new folder appears whole once every file is written (``pasture.files.atomic_dir``). In an
    existing folder each file is written under a temporary name and renamed over its target
    only when all are written; then the format's files this write did not produce (a stale
    tokenizer or shard) are removed. Nothing else in the folder is touched, and a failed write
    leaves the folder as it was.
    """
    if not path.exists():
        with atomic_dir(path) as tmp:
            yield lambda name: tmp / name
        return
    written: set[str] = set()
    with ExitStack() as stack:

        def place(name: str) -> Path:
            written.add(name)
            return stack.enter_context(atomic_file(path / name))

        yield place
    for entry in path.iterdir():
        if entry.name not in written and layout.owns(entry.name) and not entry.is_dir():
            entry.unlink(missing_ok=True)


def check_file(path: Path, label: str, recognizes: Callable[[Path], bool], force: bool) -> None:
    """Refuse to replace a file at ``path`` that is not a ``label`` checkpoint, unless ``force``."""
    if path.is_dir():
        raise PastureError(
            f"{path}: is a folder; a {label} checkpoint is one file (choose a file name)"
        )
    if (path.exists() or path.is_symlink()) and not force and not recognizes(path):
        raise PastureError(
            f"{path}: exists and is not a {label} checkpoint; choose another name, or pass "
            "--force to replace it"
        )


MAX_JSON_BYTES = 16 * 2**20  # config.json, params.json, an index: real ones are kilobytes


def read_json(path: Path) -> object:
    """A small JSON file (config, params, index); OSError or ValueError if it is not one."""
    with open(path, "rb") as f:
        data = f.read(MAX_JSON_BYTES + 1)
    if len(data) > MAX_JSON_BYTES:
        raise ValueError(f"larger than {MAX_JSON_BYTES // 2**20} MiB, not a config")
    return json.loads(data.decode("utf-8"))


def load_pickled_state(path: Path) -> dict[str, torch.Tensor]:
    """A ``.pth``/``.bin`` state dict through torch's weights-only unpickler (never pickle's).

    It admits tensors and plain containers only, so no code in the file runs; anything else it
    refuses, and so do we, in one line.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # RuntimeError, EOFError, UnpicklingError, … depending on the damage
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = next((ln for ln in lines if "WeightsUnpickler error" in ln), None)
        detail = detail or (lines[0] if lines else type(e).__name__)
        raise PastureError(
            f"{path}: refused: truncated, corrupt, or not a plain state dict of tensors ({detail})"
        ) from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise PastureError(f"{path}: not a state dict of tensors")
    return state


def read_error(path: str | os.PathLike, problem: str) -> PastureError:
    return PastureError(f"{path}: {problem}")
