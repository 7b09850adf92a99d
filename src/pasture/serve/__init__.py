"""An OpenAI-compatible server with a chat page over the continuous-batching engine
(``generate.engine``). See docs/serving.md.

    pasture serve --checkpoint stories260K.bin --tokenizer tok512.model
"""

from ..errors import PastureError

try:
    import fastapi  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError:
    raise PastureError(
        "pasture serve needs FastAPI and uvicorn: pip install 'pasture[serve]'"
    ) from None

from .app import ServerThread, build_app, load_app, serve  # noqa: E402

__all__ = ["ServerThread", "build_app", "load_app", "serve"]
