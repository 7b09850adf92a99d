"""What the lm-eval tests share: our lm-eval task YAMLs and one thread on a shared machine."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from lm_eval.tasks import TaskManager

TASK_DIR = Path(__file__).parent / "lm_eval_tasks"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The test machine is shared: two OpenMP threads wait on each other under load.
    Autouse in every test module that imports it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_tasks(names: list[str], data_dir: Path) -> dict:
    """lm-eval Task objects for our YAMLs, their data_files read relative to ``data_dir``."""
    manager = TaskManager(include_path=str(TASK_DIR), include_defaults=False)
    cwd = os.getcwd()
    os.chdir(data_dir)
    try:
        return manager.load(names)["tasks"]
    finally:
        os.chdir(cwd)
