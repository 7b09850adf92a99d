"""Text generation from a model: prefill + cached decode, sampling. Imports only ``model``."""

from .generate import StreamDecoder, generate, generate_tokens, use_decode_layout
from .sampling import sample

__all__ = ["StreamDecoder", "generate", "generate_tokens", "sample", "use_decode_layout"]
