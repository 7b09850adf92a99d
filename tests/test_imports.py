"""The import graph is a DAG in the documented direction (docs/architecture.md), and importing
one part of Pasture loads only the parts it may import: no eager import in an ``__init__``
drags the checkpoint formats, eval or training into ``import pasture.model``."""

from __future__ import annotations

import ast
import graphlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pasture"
LEAVES = {"errors", "config", "files"}  # any part may import these
# Which parts (packages and top-level modules of pasture) each may import, besides LEAVES.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "files": {"errors"},
    "config": {"errors", "files"},
    "model": set(),
    "data": set(),
    "carbon": set(),
    "generate": {"model"},
    "parallel": {"model"},
    "interop": {"model", "data"},
    "eval": {"model", "generate"},
    "train": {"model", "data", "parallel", "carbon", "eval"},
    "finetune": {"model", "data", "generate", "interop", "parallel", "train"},
    "serve": {"model", "data", "generate", "interop", "finetune"},
    "export": {"model", "data", "interop", "train"},
    "demo": {"model", "data", "generate", "interop", "train", "export", "finetune"},
    # the package itself: what ``pasture.NAME`` re-exports
    "__init__": {"model", "data", "generate", "interop"},
}
ALLOWED["cli"] = set(ALLOWED) - {"cli"}
# What a bare ``import pasture.model`` must not load (the checkpoint formats, their readers).
HEAVY = ("gguf", "safetensors", "sentencepiece", "lm_eval", "ray", "fastapi", "transformers")


def _parts() -> set[str]:
    """Every package and top-level module of pasture, by name ("__init__" for the package)."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    return modules | {path.parent.name for path in PACKAGE.glob("*/__init__.py")}


def _part(names: list[str]) -> str:
    """The part that the module pasture.NAMES... belongs to ("__init__": a name the package's
    ``__init__`` defines, as in ``from pasture import load_model``)."""
    return names[0] if names[0] in _parts() else "__init__"


def _internal_imports(path: Path) -> set[str]:
    """The parts ``path`` imports, at the top or inside a function."""
    tree = ast.parse(path.read_text())
    relative = path.relative_to(PACKAGE).parts
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = list(relative[:-1])[: len(relative) - node.level]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.split(".")[0] == "pasture":
                target = node.module.split(".")[1:]
            else:
                continue
            if target:
                found.add(_part(target))
            else:  # "from . import x, y" at the top of the package
                found.update(_part([alias.name]) for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pasture."):
                    found.add(_part(alias.name.split(".")[1:]))
    return found


def test_every_part_has_its_place_and_the_places_form_a_dag() -> None:
    unlisted = _parts() - set(ALLOWED)
    assert not unlisted, f"add {sorted(unlisted)} to ALLOWED (and to docs/architecture.md)"
    assert all(ALLOWED[leaf] <= LEAVES for leaf in LEAVES)
    graph = {
        part: allowed | (LEAVES if part not in LEAVES else set())
        for part, allowed in ALLOWED.items()
    }
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError on a cycle


def test_layers_import_only_downward() -> None:
    for part in sorted(_parts()):
        paths = (
            [PACKAGE / f"{part}.py"]
            if (PACKAGE / f"{part}.py").is_file()
            else sorted((PACKAGE / part).rglob("*.py"))
        )
        for path in paths:
            imported = _internal_imports(path) - {part}
            if part not in LEAVES:
                imported -= LEAVES
            allowed = ALLOWED[part]
            assert imported <= allowed, f"{path.relative_to(PACKAGE)} imports {imported - allowed}"


_LOADS = """
import importlib, json, sys
import pasture.model
model = sorted(sys.modules)
base = {m for m in sys.modules if m.startswith("pasture")}
loads = {}
for part in sys.argv[1:]:
    before = set(sys.modules)
    importlib.import_module(f"pasture.{part}")
    new = [m for m in sys.modules if m.startswith("pasture") and m not in before]
    loads[part] = sorted(new)
    for name in new:  # the next part starts again from the bare package
        del sys.modules[name]
print(json.dumps({"model": model, "base": sorted(base), "loads": loads}))
"""


def _reachable(part: str) -> set[str]:
    """The parts ``part`` may load: what it imports, what those import, and so on."""
    seen: set[str] = set()
    todo = [part]
    while todo:
        for other in ALLOWED[todo.pop()] - seen:
            seen.add(other)
            todo.append(other)
    return seen


@pytest.mark.slow
def test_importing_a_part_loads_only_what_it_may_import() -> None:
    """In a fresh interpreter: ``import pasture.model`` loads the model, generation and errors,
    none of HEAVY; then each part, imported alone, loads only parts it may reach in ALLOWED."""
    parts = sorted(_parts() - {"__init__"})
    done = subprocess.run(
        [sys.executable, "-c", _LOADS, *parts], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    found = json.loads(done.stdout)
    model = found["model"]
    assert {m.split(".")[0] for m in model} & set(HEAVY) == set()
    loaded = {_part(m.split(".")[1:]) for m in model if m.startswith("pasture.")}
    assert loaded <= {"model", "generate", "errors"}, loaded
    base = {_part(m.split(".")[1:]) for m in found["base"] if m.startswith("pasture.")}
    for part, modules in found["loads"].items():
        extra = {_part(m.split(".")[1:]) for m in modules} - {part} - LEAVES - base
        allowed = _reachable(part)
        assert extra <= allowed, f"import pasture.{part} loads {extra - allowed}"


# Modules that still import pasture by its absolute name (to be made relative, issue 11.4).
ABSOLUTE_PENDING: set[str] = set()


def test_one_style_of_imports_relative() -> None:
    """Pasture's modules import each other relatively (``from ..model import Transformer``), as
    most did; only examples in docstrings spell ``pasture.`` out, as a user types it."""
    absolute = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if any(name.split(".")[0] == "pasture" for name in names):
                absolute.add(path.relative_to(PACKAGE).as_posix())
    assert absolute <= ABSOLUTE_PENDING, (
        f"import relatively in {sorted(absolute - ABSOLUTE_PENDING)}"
    )
