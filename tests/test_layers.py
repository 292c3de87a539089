"""The package's layers: every import inside ``retinanet`` points down (or within its own layer).

Layers, bottom to top, as drawn in docs/architecture.md. A module may import from its own layer or a
lower one, never a higher one; the test reads each module's imports (also the ones inside functions).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "src" / "retinanet"

LAYERS = [
    ["utils", "config"],
    ["ops", "viz"],
    ["losses"],
    ["modeling", "data"],
    ["inference"],
    ["training"],
    ["export"],
    ["apps"],
    ["cli", "__main__", "__init__"],
]
LEVEL = {name: i for i, names in enumerate(LAYERS) for name in names}


def _package_of(module: str) -> str:
    """``retinanet.ops.nms`` -> ``ops``; ``retinanet`` (the root) -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "retinanet":
                out.extend((node.lineno, f"retinanet.{a.name}") for a in node.names)
            elif node.module.startswith("retinanet."):
                out.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            out.append((node.lineno, "relative"))
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name) for a in node.names if a.name.startswith("retinanet."))
    return out


MODULES = sorted(p for p in ROOT.rglob("*.py"))


def test_every_package_has_a_layer():
    packages = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in MODULES}
    assert packages <= set(LEVEL), f"packages without a layer: {sorted(packages - set(LEVEL))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    own = path.relative_to(ROOT).parts[0].removesuffix(".py")
    upward = []
    for line, module in _imports(path):
        if module == "relative":
            upward.append(f"line {line}: relative import (use absolute retinanet.* imports)")
            continue
        target = _package_of(module)
        if target not in LEVEL:
            continue  # e.g. a submodule of the root package that the layer test above reports
        if LEVEL[target] > LEVEL[own]:
            upward.append(f"line {line}: {module} (layer {LEVEL[target]}) from {own} (layer {LEVEL[own]})")
    assert not upward, f"{path.relative_to(ROOT)} imports upward:\n" + "\n".join(upward)


def test_the_check_finds_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from retinanet.training.trainer import Trainer\n")
    assert _imports(bad) == [(2, "retinanet.training.trainer")]
    assert LEVEL[_package_of("retinanet.training.trainer")] > LEVEL["modeling"]
