"""Hugging Face's format: ``config.json`` + ``model.safetensors`` (+ ``tokenizer.model``).

Hugging Face's ``LlamaForCausalLM`` rotates the two halves of each head instead of Meta's
interleaved pairs, so its conversion script permutes the rows of ``wq`` and ``wk``; we apply
that permutation on the way out and its inverse on the way in.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..data.tokenizer import Tokenizer
from ..errors import PastureError
from ..model import ConfigError, ModelArgs
from .weights import (
    Checkpoint,
    FolderLayout,
    check_folder,
    folder_writer,
    load_pickled_state,
    read_json,
)

_LAYER_KEYS = {
    "self_attn.q_proj": "attention.wq",
    "self_attn.k_proj": "attention.wk",
    "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo",
    "mlp.gate_proj": "feed_forward.w1",
    "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3",
    "input_layernorm": "attention_norm",
    "post_attention_layernorm": "ffn_norm",
}
_TOP_KEYS = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}
_HF_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)\.weight$")
_META_LAYER = re.compile(r"layers\.(\d+)\.(.+)\.weight$")


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _is_llama_config(path: Path) -> bool:
    try:
        config = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False
    return isinstance(config, dict) and config.get("model_type") == "llama"


# What save writes, plus the sharded weights another writer may have left (our reader would
# prefer their index to our model.safetensors).
LAYOUT = FolderLayout(
    "Hugging Face",
    "config.json",
    re.compile(
        r"config\.json|model\.safetensors(\.index\.json)?|model-\d+-of-\d+\.safetensors"
        r"|tokenizer\.model|tokenizer_config\.json"
    ),
    _is_llama_config,
)


def check_destination(path: Path, force: bool = False) -> None:
    check_folder(path, LAYOUT, force)


def permute_to_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta's interleaved rotary rows → Hugging Face's rotate-half rows (their conversion)."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def permute_from_hf(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_key(meta_key: str) -> str:
    if meta_key in _TOP_KEYS.values():
        return next(k for k, v in _TOP_KEYS.items() if v == meta_key)
    layer, name = _META_LAYER.match(meta_key).groups()
    hf_name = next(k for k, v in _LAYER_KEYS.items() if v == name)
    return f"model.layers.{layer}.{hf_name}.weight"


def meta_key(key: str, source: Path) -> str:
    if key in _TOP_KEYS:
        return _TOP_KEYS[key]
    match = _HF_LAYER.match(key)
    if match is None or match.group(2) not in _LAYER_KEYS:
        raise PastureError(f"{source}: unexpected tensor {key} for a Llama model")
    return f"layers.{match.group(1)}.{_LAYER_KEYS[match.group(2)]}.weight"


# ModelArgs field → the config.json key it comes from, for error messages.
_CONFIG_KEYS = {
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "vocab_size": "vocab_size",
    "hidden_dim": "intermediate_size",
    "norm_eps": "rms_norm_eps",
    "rope_theta": "rope_theta",
    "max_seq_len": "max_position_embeddings",
    "tie_embeddings": "tie_word_embeddings",
}


def args_from_config(config: object, source: Path) -> ModelArgs:
    if not isinstance(config, dict):
        raise PastureError(f"{source}: must hold a JSON object, not {type(config).__name__}")
    if config.get("model_type") != "llama":
        raise PastureError(f"{source}: model_type {config.get('model_type')!r} is not 'llama'")
    if config.get("hidden_act", "silu") != "silu":
        raise PastureError(f"{source}: hidden_act {config['hidden_act']!r} is not 'silu'")
    if config.get("attention_bias") or config.get("mlp_bias"):
        raise PastureError(f"{source}: biases are not part of the LLaMA architecture")
    rope = config.get("rope_parameters") or {}
    scaling = config.get("rope_scaling") or {}
    for name, value in (("rope_parameters", rope), ("rope_scaling", scaling)):
        if not isinstance(value, dict):
            raise PastureError(f"{source}: {name} must be a JSON object, got {value!r}")
    for kind in (rope.get("rope_type", "default"), scaling.get("rope_type", "default")):
        if kind != "default":
            raise PastureError(f"{source}: rope scaling {kind!r} is not supported")
    missing = [
        k
        for k in (
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "vocab_size",
            "intermediate_size",
        )
        if k not in config
    ]
    if missing:
        raise PastureError(f"{source}: config.json lacks {missing[0]!r}")
    try:
        args = ModelArgs(
            dim=config["hidden_size"],
            n_layers=config["num_hidden_layers"],
            n_heads=config["num_attention_heads"],
            n_kv_heads=config.get("num_key_value_heads"),
            vocab_size=config["vocab_size"],
            hidden_dim=config["intermediate_size"],
            norm_eps=config.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", config.get("rope_theta", 10000.0)),
            max_seq_len=config.get("max_position_embeddings", 2048),
            tie_embeddings=config.get("tie_word_embeddings", False),
        )
    except ConfigError as e:
        raise PastureError(f"{source}: {_CONFIG_KEYS.get(e.field, e.field)} {e.problem}") from None
    if config.get("head_dim") not in (None, args.head_dim):
        raise PastureError(
            f"{source}: head_dim {config['head_dim']!r} != hidden_size / num_attention_heads "
            f"({args.head_dim})"
        )
    return args


def config_from_args(args: ModelArgs, dtype: torch.dtype) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "intermediate_size": args.ffn_hidden_dim,
        "num_hidden_layers": args.n_layers,
        "num_attention_heads": args.n_heads,
        "num_key_value_heads": args.kv_heads,
        "head_dim": args.head_dim,
        "vocab_size": args.vocab_size,
        "rms_norm_eps": args.norm_eps,
        "rope_theta": args.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": args.rope_theta},
        "max_position_embeddings": args.max_seq_len,
        "tie_word_embeddings": args.tie_embeddings,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }


def _weight_files(path: Path) -> list[Path]:
    """The safetensors files ``model.safetensors.index.json`` lists (plain names in ``path``)."""
    index = path / "model.safetensors.index.json"
    try:
        weight_map = read_json(index)["weight_map"]
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise PastureError(f"{index}: unreadable ({e})") from None
    except (KeyError, TypeError):
        raise PastureError(f'{index}: no "weight_map" object') from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise PastureError(f'{index}: "weight_map" must be a non-empty object')
    names = set(weight_map.values())
    for name in names:
        if (
            not isinstance(name, str)
            or Path(name).name != name
            or not name.endswith(".safetensors")
        ):
            raise PastureError(f"{index}: {name!r} is not a .safetensors file name in {path}")
        if not (path / name).is_file():
            raise PastureError(f"{index}: lists {name}, which is not in {path}")
    return [path / name for name in sorted(names)]


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    if (path / "model.safetensors.index.json").is_file():
        files = _weight_files(path)
    elif (path / "model.safetensors").is_file():
        files = [path / "model.safetensors"]
    elif (path / "pytorch_model.bin").is_file():
        files = [path / "pytorch_model.bin"]
    else:
        raise PastureError(f"{path}: no model.safetensors (or pytorch_model.bin) next to config")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            try:
                part = load_file(file)
            except (SafetensorError, OSError, RuntimeError, EOFError, ValueError) as e:
                raise PastureError(f"{file}: truncated or corrupt checkpoint ({e})") from None
        else:
            part = load_pickled_state(file)
        tensors.update(part)
    return tensors


def load(path: Path) -> Checkpoint:
    try:
        config = read_json(path / "config.json")
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise PastureError(f"{path / 'config.json'}: unreadable ({e})") from None
    args = args_from_config(config, path / "config.json")
    state = {}
    for key, tensor in _read_tensors(path).items():
        if key.endswith("rotary_emb.inv_freq"):
            continue  # older transformers saved the rotary table; we recompute it
        state[meta_key(key, path)] = tensor
    tokenizer = None
    if (path / "tokenizer.model").is_file():
        tokenizer = Tokenizer.from_file(path / "tokenizer.model")
    ckpt = Checkpoint(args, state, tokenizer, source=str(path), format="hf")
    ckpt.validate()  # shapes first: the permutation below assumes them
    for name, tensor in state.items():
        if name.endswith("attention.wq.weight"):
            state[name] = permute_from_hf(tensor, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            state[name] = permute_from_hf(tensor, args.kv_heads)
    return ckpt


def save(ckpt: Checkpoint, path: Path, force: bool = False) -> None:
    """Write ``path/config.json``, ``model.safetensors`` and, with a tokenizer, its files.

    An existing folder must be a Pasture Hugging Face checkpoint, or ``force`` given; either
    way only the files in ``LAYOUT`` are replaced (see ``check_folder``).
    """
    check_destination(path, force)
    args = ckpt.args
    tensors = {}
    for name, tensor in ckpt.state_dict.items():
        if args.tie_embeddings and name == "output.weight":
            continue  # safetensors stores no aliases; tie_word_embeddings restores it
        if name.endswith("attention.wq.weight"):
            tensor = permute_to_hf(tensor, args.n_heads)
        elif name.endswith("attention.wk.weight"):
            tensor = permute_to_hf(tensor, args.kv_heads)
        tensors[hf_key(name)] = tensor.contiguous()
    dtype = ckpt.state_dict["tok_embeddings.weight"].dtype
    with folder_writer(path, LAYOUT) as place:
        place("config.json").write_text(json.dumps(config_from_args(args, dtype), indent=2))
        save_file(tensors, place("model.safetensors"), metadata={"format": "pt"})
        if ckpt.tokenizer is not None:
            place("tokenizer.model").write_bytes(ckpt.tokenizer.to_bytes())
            tok = ckpt.tokenizer
            special = {
                "bos_token": tok.id_to_piece(tok.bos_id),
                "eos_token": tok.id_to_piece(tok.eos_id),
                "unk_token": tok.id_to_piece(tok.unk_id),
            }
            tokenizer_config = {"tokenizer_class": "LlamaTokenizer", **special}
            place("tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
