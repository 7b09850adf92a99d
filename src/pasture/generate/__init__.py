"""Text generation from a model: prefill + cached decode, sampling. Imports only ``model``."""

from .generate import StreamDecoder, generate, generate_tokens, use_decode_layout
from .sampling import Llama2cSampler, sample

__all__ = [
    "Llama2cSampler",
    "StreamDecoder",
    "generate",
    "generate_tokens",
    "sample",
    "use_decode_layout",
]
