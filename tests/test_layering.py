"""The direction of imports between the folders of ``src/torchspine`` (docs/architecture.md).

Every ``import``/``from ... import`` of a ``torchspine.<folder>`` module (and every
``importlib.import_module("torchspine....")`` with a literal name), at module level or inside a
function, is read with ``ast`` and checked against the table below: a folder may import only
the folders under it. The table is the one drawn in docs/architecture.md; change both together.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "torchspine"

# folder -> the folders it may import (besides itself). Bottom first.
ALLOWED: dict[str, set[str]] = {
    "utils": set(),
    "specs": {"utils"},
    "layers": {"specs", "utils"},
    "models": {"layers", "specs", "utils"},
    "data": {"utils"},
    "analysis": {"models", "layers", "specs", "utils"},
    "interop": {"data", "models", "layers", "specs", "utils"},  # data: calibration images for INT8
    "weights": {"interop", "data", "models", "layers", "specs", "utils"},  # data: the label map of converted detectors
    "engine": {"weights", "interop", "analysis", "data", "models", "layers", "specs", "utils"},
    "search": {"engine", "analysis", "data", "models", "layers", "specs", "utils"},
    "cli": {"search", "engine", "weights", "interop", "analysis", "data", "models", "layers", "specs", "utils"},
    # top-level modules: the lazy public API, the timm hook and ``python -m torchspine``
    "__init__": {"_timm_hook", "models", "specs"},
    "_timm_hook": {"models"},
    "__main__": {"cli"},
}

# The one upward arrow, taken at call time only: ``create_model(name, weights=tag)`` resolves a
# catalogue entry of torchspine.weights (which itself builds models), so the registry imports it
# inside the function, never at module level.
CALL_TIME_ONLY: set[tuple[str, str]] = {("models/registry.py", "weights")}


def _folder(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(tree: ast.AST) -> list[tuple[str, int, bool]]:
    """``(torchspine.<folder>, line, at module level)`` for every import in ``tree``."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = ([f"{node.module}.{a.name}" for a in node.names] if node.module == "torchspine"
                     else [node.module])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names = [node.args[0].value]
        for n in names:
            parts = n.split(".")
            if parts[0] == "torchspine" and len(parts) > 1:
                found.append((parts[1], node.lineno, top))
        inner = top and not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
        for child in ast.iter_child_nodes(node):
            visit(child, inner)

    visit(tree, True)
    return found


def _violations() -> list[str]:
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        here = _folder(path)
        rel = str(path.relative_to(SRC))
        assert here in ALLOWED, f"{rel}: folder {here!r} is not in the layering table (add it here and to the docs)"
        for target, line, top in _imports(ast.parse(path.read_text(encoding="utf-8"), filename=rel)):
            if target == here or target in ALLOWED[here]:
                continue
            if (rel, target) in CALL_TIME_ONLY and not top:
                continue
            bad.append(f"{rel}:{line} ({here}/) imports torchspine.{target}")
    return bad


def test_every_import_points_down() -> None:
    assert _violations() == []


def test_models_and_layers_never_import_the_engine_or_the_cli() -> None:
    # The rule the house is built on: model code is usable without training or command-line code.
    for folder in ("layers", "models", "specs"):
        assert not ALLOWED[folder] & {"engine", "cli", "search", "data"}, folder


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    # A model module importing the engine inside a function is found (so the test above can fail).
    tree = ast.parse("def f():\n    from torchspine.engine.trainer import train\n"
                     "import importlib\nimportlib.import_module('torchspine.cli.train')\n")
    assert _imports(tree) == [("engine", 2, False), ("cli", 4, True)]
