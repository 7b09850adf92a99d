"""The paper's evaluation suite (§3, §5) on the three-method model contract.

Imports ``model`` and ``generate`` only (and ``errors``).
"""

from .lm import GenerationRequest, LanguageModel, PastureLM, Sampling
from .task import EvalSettings, Task, TaskResult

__all__ = [
    "EvalSettings",
    "GenerationRequest",
    "LanguageModel",
    "PastureLM",
    "Sampling",
    "Task",
    "TaskResult",
]
