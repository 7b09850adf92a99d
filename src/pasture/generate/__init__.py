"""Text generation from a model: prefill + cached decode, sampling. Imports only ``model``."""

from .generate import StreamDecoder, generate, generate_tokens
from .sampling import sample

__all__ = ["StreamDecoder", "generate", "generate_tokens", "sample"]
