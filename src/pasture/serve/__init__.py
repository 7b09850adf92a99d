"""An OpenAI-compatible server with a chat page over the continuous-batching engine
(``generate.engine``). See docs/serving.md.

    pasture serve --checkpoint stories260K.bin --tokenizer tok512.model
"""

from .app import ServerThread, build_app, serve

__all__ = ["ServerThread", "build_app", "serve"]
