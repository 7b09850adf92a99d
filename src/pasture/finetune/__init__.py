"""Instruction finetuning (LLaMA-I, paper §4): instruction data in the common JSONL shapes,
a Jinja2 chat template, loss on response tokens only, packing with a block-causal mask,
full finetuning or LoRA. See docs/finetuning.md."""

from .data import Example, read_examples
from .lora import LoRAConfig, LoRALinear, apply_lora, lora_state, merge_lora, remove_lora
from .loss import finetune_step, response_loss
from .packing import IGNORE, Batch, TokenSequence, batches, collate, pack, tokenize
from .synthetic import synthetic_records, write_jsonl
from .template import DEFAULT_TEMPLATE, encode_chat, load_template, render, save_template

__all__ = [
    "DEFAULT_TEMPLATE",
    "IGNORE",
    "Batch",
    "Example",
    "LoRAConfig",
    "LoRALinear",
    "TokenSequence",
    "apply_lora",
    "batches",
    "collate",
    "encode_chat",
    "finetune_step",
    "load_template",
    "lora_state",
    "merge_lora",
    "pack",
    "read_examples",
    "remove_lora",
    "render",
    "response_loss",
    "save_template",
    "synthetic_records",
    "tokenize",
    "write_jsonl",
]
