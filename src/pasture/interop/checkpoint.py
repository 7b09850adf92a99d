"""The in-memory checkpoint every format reads into and writes from.

Weights are held under Meta's keys (``tok_embeddings.weight``, ``layers.0.attention.wq.weight``,
…, ``output.weight``) in Meta's rotary layout (interleaved pairs); each format module converts
at its boundary.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.tokenizer import Tokenizer
from ..errors import PastureError
from ..model import ModelArgs, Transformer


@dataclass
class Checkpoint:
    args: ModelArgs
    state_dict: dict[str, torch.Tensor]
    tokenizer: Tokenizer | None = None
    source: str = ""  # the path it was read from, for error messages
    format: str = ""
    metadata: dict[str, object] = field(default_factory=dict)

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            model = Transformer(self.args)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    def validate(self) -> None:
        """Every key the config implies is present with its shape; nothing else is."""
        where = self.source or "checkpoint"
        expected = self.expected_shapes()
        if self.args.tie_embeddings:
            expected.pop("output.weight", None)
        state = dict(self.state_dict)
        if self.args.tie_embeddings:
            state.pop("output.weight", None)
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


@contextmanager
def atomic_path(dst: str | os.PathLike, is_dir: bool) -> Iterator[Path]:
    """Yield a temporary sibling of ``dst``; rename it over ``dst`` only if the block succeeds.

    A failed or interrupted write leaves ``dst`` as it was (absent, or the previous version).
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir and dst.exists():
            backup = dst.with_name(f".{dst.name}.old")
            _remove(backup)
            dst.rename(backup)
            tmp.rename(dst)
            _remove(backup)
        else:
            os.replace(tmp, dst)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path: Path) -> None:
    if path.is_dir():
        for child in path.iterdir():
            _remove(child)
        path.rmdir()
    elif path.exists():
        path.unlink()


def read_error(path: str | os.PathLike, problem: str) -> PastureError:
    return PastureError(f"{path}: {problem}")
