"""Text generation from a model: prefill + cached decode, KV caches (a static
per-row cache for serving), sampling. Imports only ``model``."""

from .cache import DecodeCache, StaticCache, decode_attention
from .generate import StreamDecoder, generate, generate_tokens, use_decode_layout
from .sampling import Llama2cSampler, sample

__all__ = [
    "DecodeCache",
    "StaticCache",
    "decode_attention",
    "Llama2cSampler",
    "StreamDecoder",
    "generate",
    "generate_tokens",
    "sample",
    "use_decode_layout",
]
