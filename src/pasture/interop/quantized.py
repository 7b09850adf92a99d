"""Pasture's weight-only quantized checkpoint: a folder of ``quantization.json`` (the model's
arguments, int8 or int4, the group size, which layers are quantized), ``model.safetensors``
(int8 / packed int4 weights with their scales, float tensors for the rest) and
``tokenizer.model``.

    pasture quantize SRC DST --dtype int8|int4

Loading builds the model on the meta device and reads each tensor from the safetensors file
straight onto the target device: no full copy of the model in CPU memory.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..data.tokenizer import Tokenizer
from ..errors import PastureError
from ..files import write_text
from ..model import ConfigError, ModelArgs, Transformer
from ..model.quant import QuantConfig, empty_quantized, prepare_kernels, quantize
from .weights import Checkpoint, FolderLayout, check_folder, folder_writer, read_json

FORMAT = "pasture-quantized"
VERSION = 1
MARKER = "quantization.json"
WEIGHTS = "model.safetensors"


def _recognizes(path: Path) -> bool:
    try:
        meta = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(meta, dict) and meta.get("format") == FORMAT


LAYOUT = FolderLayout(
    label="quantized",
    marker=MARKER,
    files=re.compile(r"quantization\.json|model\.safetensors|tokenizer\.model"),
    recognizes=_recognizes,
)


def detect(path: Path) -> bool:
    return path.is_dir() and (path / MARKER).is_file()


def check_destination(path: Path, force: bool = False) -> None:
    check_folder(path, LAYOUT, force)


def save(ckpt: Checkpoint, path: Path, cfg: QuantConfig, force: bool = False) -> dict:
    """Quantize ``ckpt`` and write it at ``path``; returns what ``quantize`` reports."""
    check_destination(path, force)
    model = ckpt.to_model("cpu")  # float tensors (norms, embedding) keep their dtype
    counts = quantize(model, cfg)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if ckpt.args.tie_embeddings and "output" not in counts["layers"]:
        state.pop("output.weight")  # the same tensor as the embedding (safetensors stores it once)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": cfg.dtype,
        "group_size": cfg.group_size,
        "layers": counts["layers"],
        "args": asdict(ckpt.args),
        "source": ckpt.source,
    }
    with folder_writer(path, LAYOUT) as place:
        save_file(state, place(WEIGHTS), metadata={"format": FORMAT})
        write_text(place(MARKER), _json(meta))
        if ckpt.tokenizer is not None:
            ckpt.tokenizer.save(place("tokenizer.model"))
    return counts


def _json(meta: dict) -> str:
    return json.dumps(meta, indent=2) + "\n"


def read_meta(path: Path) -> tuple[ModelArgs, QuantConfig, list[str]]:
    where = path / MARKER
    try:
        meta = read_json(where)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise PastureError(f"{where}: cannot read ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise PastureError(f"{where}: not a {FORMAT} description")
    if meta.get("version") != VERSION:
        raise PastureError(
            f"{where}: version {meta.get('version')!r}; this Pasture reads {VERSION}"
        )
    try:
        args = ModelArgs(**meta["args"])
        cfg = QuantConfig(meta["dtype"], meta["group_size"])
    except (KeyError, TypeError, ConfigError) as e:
        raise PastureError(f"{where}: bad description ({e})") from None
    layers = meta.get("layers")
    if not isinstance(layers, list) or not all(isinstance(n, str) for n in layers):
        raise PastureError(f"{where}: 'layers' must be a list of layer names")
    return args, cfg, layers


def load_model(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[Transformer, Tokenizer | None]:
    """The quantized model at ``path`` on ``device``, read tensor by tensor onto it."""
    path = Path(path)
    args, cfg, layers = read_meta(path)
    with torch.device("meta"):
        model = Transformer(args)
    empty_quantized(model, layers, cfg, device="meta")
    expected = model.state_dict()
    if args.tie_embeddings and "output.weight" in expected and "output" not in layers:
        expected.pop("output.weight")
    file = path / WEIGHTS
    state: dict[str, torch.Tensor] = {}
    try:
        with safe_open(file, framework="pt", device=str(device)) as f:
            keys = set(f.keys())
            missing = sorted(set(expected) - keys)
            if missing:
                raise PastureError(f"{file}: missing tensor {missing[0]} ({len(missing)} missing)")
            extra = sorted(keys - set(expected))
            if extra:
                raise PastureError(f"{file}: unexpected tensor {extra[0]}")
            for key, want in expected.items():
                tensor = f.get_tensor(key)
                if (
                    tensor.shape != want.shape
                    or tensor.dtype != want.dtype
                    and (not want.is_floating_point() or not tensor.is_floating_point())
                ):
                    raise PastureError(
                        f"{file}: tensor {key} is {tuple(tensor.shape)} {tensor.dtype}, "
                        f"expected {tuple(want.shape)} {want.dtype}"
                    )
                state[key] = tensor
    except (SafetensorError, OSError) as e:
        raise PastureError(f"{file}: cannot read ({e})") from None
    model.load_state_dict(state, strict=False, assign=True)
    if args.tie_embeddings and "output" not in layers:
        model.output.weight = model.tok_embeddings.weight
    prepare_kernels(model)
    tokenizer = None
    if (path / "tokenizer.model").is_file():
        tokenizer = Tokenizer.from_file(path / "tokenizer.model")
    return model.eval(), tokenizer


__all__ = ["LAYOUT", "detect", "check_destination", "save", "load_model"]
