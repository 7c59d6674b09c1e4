"""The house rules of graft/, checked on the source: no import circles, runtime imports
nothing of the build side, format modules are leaves, modules stay small, and importing graft
changes no global state of the process."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "graft"
MAX_LINES = 320


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions (relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def graph() -> dict[str, set[str]]:
    """graft module -> the graft modules it imports (a package import counts as its __init__)."""
    edges = {}
    for name, path in MODULES.items():
        targets = {t for t in imports_of(path) if t in MODULES and t != name}
        # `from graft.bundle import x` imports graft/bundle/__init__, not the submodules it re-exports
        edges[name] = {t for t in targets if not (name.startswith(t + ".") and MODULES[t].name == "__init__.py")}
    return edges


def test_no_import_circles():
    edges = graph()
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "active"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "active":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_runtime_imports_nothing_of_the_build_side():
    forbidden = ("graft.builder", "graft.exporters", "graft.report", "tensorflow", "keras", "tf2onnx")
    bad = {name: sorted(t for t in imports_of(path) if t.startswith(forbidden))
           for name, path in MODULES.items() if name.startswith("graft.runtime")}
    assert {k: v for k, v in bad.items() if v} == {}


@pytest.mark.parametrize("leaf", ["graft.exporters.onnx", "graft.exporters.onnx_metadata",
                                  "graft.exporters.tflite", "graft.exporters.tflite_metadata"])
def test_format_modules_are_leaves(leaf):
    orchestrators = ("graft.exporters.export", "graft.exporters.context", "graft.exporters.verify",
                     "graft.exporters.debug", "graft.cli")
    assert not [t for t in imports_of(MODULES[leaf]) if t.startswith(orchestrators)]


def test_modules_stay_small():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in MODULES.items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_importing_graft_changes_no_global_state():
    """Pillow's bomb guard and the warning filters belong to the application embedding graft."""
    code = ("import warnings, numpy, click, rich, onnxruntime; from PIL import Image; "  # third parties first
            "before = (Image.MAX_IMAGE_PIXELS, list(warnings.filters)); "
            "import graft, graft.runtime, graft.runtime.batch, graft.runtime.preprocess, graft.cli; "
            "from graft.runtime.preprocess import load_pixels; import numpy as np; "
            "load_pixels(np.zeros((8, 8, 3), np.uint8), {'size': [4, 4]}); "
            "print(before == (Image.MAX_IMAGE_PIXELS, list(warnings.filters)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "True"
