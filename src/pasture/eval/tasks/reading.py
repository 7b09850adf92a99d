"""(being written)"""

from ..task import Task

TASKS: list[Task] = []
