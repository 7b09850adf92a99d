"""The import graph is a DAG in the documented direction (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "pasture"
# Which internal packages each may import. errors, config and files are leaves any layer may use.
ALLOWED = {
    "model": set(),
    "data": set(),
    "interop": {"model", "data"},
    "generate": {"model"},
    "carbon": set(),
    "parallel": {"model"},
    "train": {"model", "data", "parallel", "carbon", "eval"},
    "eval": {"model", "generate"},
}


def _internal_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    relative = path.relative_to(PACKAGE).parts
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = list(relative[:-1])[: len(relative) - node.level]
                target = base + (node.module.split(".") if node.module else [])
            elif node.module and node.module.startswith("pasture"):
                target = node.module.split(".")[1:]
            else:
                continue
            if not target:  # "from . import x" at the top of a package
                target = [alias.name for alias in node.names][:1]
            found.add(target[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pasture."):
                    found.add(alias.name.split(".")[1])
    return found


def test_layers_import_only_downward() -> None:
    for layer, allowed in ALLOWED.items():
        for path in (PACKAGE / layer).rglob("*.py"):
            imported = _internal_imports(path) - {layer, "errors", "config", "files"}
            assert imported <= allowed, f"{path.relative_to(PACKAGE)} imports {imported - allowed}"
