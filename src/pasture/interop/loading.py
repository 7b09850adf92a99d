"""A checkpoint straight onto the device it runs on, one tensor at a time.

``load_model`` is what inference uses (``pasture generate``, ``pasture serve``). For Hugging
Face safetensors checkpoints (one file or shards) and Pasture's quantized checkpoints it builds
the model on the meta device and moves each tensor from its file to the target device (and
dtype) before reading the next, so host memory holds one tensor at a time, never the model: a
65B model in bfloat16 (121.6 GiB) loads onto one 141 GB GPU. The other formats are read whole
(llama2.c and GGUF files are small in practice; Meta's ``.pth`` shards are memory-mapped).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..data.tokenizer import Tokenizer
from ..errors import PastureError
from ..model import Transformer, state_dict_shapes
from ..model.quant import QuantConfig
from ..model.quant import quantize as quantize_model
from . import hf, quantized
from .weights import read_json


def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = None,
    tokenizer: str | Path | Tokenizer | None = None,
    quantize: QuantConfig | None = None,
) -> tuple[Transformer, Tokenizer | None]:
    """The model at ``path`` in eval mode on ``device`` (in ``dtype``, default: as stored),
    and its tokenizer (``tokenizer`` replaces an embedded one). ``quantize`` quantizes the
    linear layers once loaded (weight-only int8/int4, on the device)."""
    from . import load  # the package's format detection

    path = Path(path)
    if path.is_file() and path.name in ("params.json", "config.json", quantized.MARKER):
        path = path.parent
    if quantized.detect(path):
        if dtype is not None or quantize is not None:
            raise PastureError(f"{path}: already quantized; it keeps its own dtypes")
        model, tok = quantized.load_model(path, device)
    elif hf.detect(path) and _safetensors_files(path):
        model, tok = _load_hf(path, torch.device(device), dtype)
    else:
        ckpt = load(path)
        model, tok = ckpt.to_model(device, dtype), ckpt.tokenizer
    if quantize is not None:
        quantize_model(model, quantize)
    if tokenizer is not None:
        tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer.from_file(tokenizer)
    if tok is not None and tok.vocab_size != model.args.vocab_size:
        raise PastureError(
            f"{path}: tokenizer has {tok.vocab_size} tokens, the model's vocab is "
            f"{model.args.vocab_size}"
        )
    return model, tok


def _safetensors_files(path: Path) -> list[Path]:
    if (path / "model.safetensors.index.json").is_file():
        return hf._weight_files(path)
    if (path / "model.safetensors").is_file():
        return [path / "model.safetensors"]
    return []


def _load_hf(
    path: Path, device: torch.device, dtype: torch.dtype | None
) -> tuple[Transformer, Tokenizer | None]:
    try:
        config = read_json(path / "config.json")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise PastureError(f"{path / 'config.json'}: unreadable ({e})") from None
    args = hf.args_from_config(config, path / "config.json")
    expected = state_dict_shapes(args)
    if args.tie_embeddings:
        expected.pop("output.weight", None)
    files = _safetensors_files(path)
    where: dict[str, Path] = {}  # Meta key → the file holding it; shapes checked before reading
    try:
        for file in files:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                    if key.endswith("rotary_emb.inv_freq"):
                        continue
                    name = hf.meta_key(key, file)
                    if name not in expected:
                        raise PastureError(f"{file}: unexpected tensor {key} for this config")
                    shape = tuple(f.get_slice(key).get_shape())
                    if shape != expected[name]:
                        raise PastureError(
                            f"{file}: tensor {key} has shape {shape}, the config implies "
                            f"{expected[name]}"
                        )
                    where[name] = file
    except (SafetensorError, OSError) as e:
        raise PastureError(f"{file}: truncated or corrupt checkpoint ({e})") from None
    missing = sorted(set(expected) - set(where))
    if missing:
        raise PastureError(f"{path}: missing tensor {missing[0]} ({len(missing)} missing)")
    with torch.device("meta"):
        model = Transformer(args)
    for file in files:
        try:
            with safe_open(file, framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (a safe_open handle is not iterable)
                    if key.endswith("rotary_emb.inv_freq"):
                        continue
                    name = hf.meta_key(key, file)
                    tensor = f.get_tensor(key).to(device=device, dtype=dtype)  # one at a time
                    if name.endswith("attention.wq.weight"):
                        tensor = hf.permute_from_hf(tensor, args.n_heads)
                    elif name.endswith("attention.wk.weight"):
                        tensor = hf.permute_from_hf(tensor, args.kv_heads)
                    if not tensor.is_floating_point():
                        raise PastureError(f"{file}: tensor {key} is {tensor.dtype}, not float")
                    _assign(model, name, tensor.contiguous())
        except (SafetensorError, OSError) as e:
            raise PastureError(f"{file}: truncated or corrupt checkpoint ({e})") from None
    if args.tie_embeddings:
        model.output.weight = model.tok_embeddings.weight
    tokenizer = None
    if (path / "tokenizer.model").is_file():
        tokenizer = Tokenizer.from_file(path / "tokenizer.model")
    return model.eval(), tokenizer


def _assign(model: nn.Module, name: str, tensor: torch.Tensor) -> None:
    module_name, _, param = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, param, nn.Parameter(tensor, requires_grad=False))


__all__ = ["load_model"]
