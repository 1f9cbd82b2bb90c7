"""The package layout holds: no import cycle among slimvit's modules (imports inside functions
count too), few imports hidden inside functions, and every registry entry reaches the CLI help
and the docs. The layer contracts themselves run as `lint-imports` in `make test`."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("exporter", "calibration")
# Imports inside functions that are allowed: each must carry a comment saying why (a heavy
# optional dependency kept lazy, or a subprocess entry point that must stay importable alone).
MAX_FUNCTION_IMPORTS = 10


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return found


def test_no_import_cycles():
    graph = grimp.build_graph(*PACKAGES, include_external_packages=False, cache_dir=None)
    assert _cycles(graph) == []


def _function_imports() -> list[tuple[str, int, str]]:
    """In-package imports placed inside a function: (file, line, the line's text)."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            text = path.read_text()
            lines = text.splitlines()
            for fn in ast.walk(ast.parse(text)):
                if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                    continue
                for node in ast.walk(fn):
                    mod = node.module if isinstance(node, ast.ImportFrom) else (
                        node.names[0].name if isinstance(node, ast.Import) else None)
                    if mod and mod.split(".")[0] in PACKAGES:
                        found.append((str(path.relative_to(ROOT)), node.lineno, lines[node.lineno - 1]))
    return found


def test_in_package_imports_inside_functions_are_few_and_explained():
    found = _function_imports()
    assert len(found) <= MAX_FUNCTION_IMPORTS, "\n".join(f"{f}:{n}: {t.strip()}" for f, n, t in found)
    uncommented = [f"{f}:{n}" for f, n, t in found if "#" not in t]
    assert uncommented == [], f"in-function imports need a comment saying why: {uncommented}"


def test_the_cycle_finder_finds_a_cycle():
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]


def _registries() -> dict[str, list[str]]:
    from exporter.checkpoints import LOADERS
    from exporter.convert.formats import FORMATS
    from exporter.convert.quantize.registry import precision_names
    from exporter.training import RECIPES

    return {"formats": list(FORMATS), "precisions": precision_names(), "checkpoint formats": list(LOADERS),
            "recipes": list(RECIPES)}


@pytest.mark.parametrize("command, registry", [
    (["export", "--help"], "formats"), (["export", "--help"], "precisions"),
    (["export", "--help"], "checkpoint formats"), (["train", "--help"], "recipes"),
    (["formats"], "formats"), (["formats"], "precisions"),
])
def test_every_registry_entry_is_in_the_cli(command, registry):
    from exporter.cli import app

    out = CliRunner().invoke(app, command, env={"COLUMNS": "240"}, terminal_width=240).output
    missing = [name for name in _registries()[registry] if name not in out]
    assert missing == [], f"slimvit {' '.join(command)} does not list {registry} {missing}"


@pytest.mark.parametrize("registry, doc", [("formats", "docs/bundle-format.md"),
                                           ("precisions", "docs/quantization.md"),
                                           ("checkpoint formats", "docs/checkpoints.md"),
                                           ("recipes", "README.md")])
def test_every_registry_entry_is_documented(registry, doc):
    text = (ROOT / doc).read_text()
    missing = [name for name in _registries()[registry] if f"`{name}`" not in text and name not in text]
    assert missing == [], f"{doc} does not mention {registry} {missing}"
