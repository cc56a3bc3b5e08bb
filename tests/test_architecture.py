"""The shape the code keeps, so it stays easy to carry on: folders that show the architecture, every import
pointing down (import-linter's layers contract in pyproject.toml, run in CI by `lint-imports`), no import
cycle between any two modules, and no module or function grown past what a reader takes in."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import grimp
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "src" / "cnnkit"
MAX_ENTRIES = 12  # packages and modules beside the package's own __init__ (the API) and __main__
MAX_MODULE_LINES = 400  # a generous guard: structure, not size, is what the layers hold
MAX_PARAMETERS = 7  # not counting self or cls


def top_level_entries() -> set[str]:
    return {
        p.stem
        for p in SOURCE.iterdir()
        if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and not p.stem.startswith("__"))
    }


def test_the_top_level_has_few_entries_and_the_layers_contract_names_each():
    entries = top_level_entries()
    assert len(entries) <= MAX_ENTRIES, sorted(entries)
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layered = {name for c in contracts if c["type"] == "layers" for name in c["layers"]}
    assert layered == entries


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = []
            while (member := stack.pop()) != module:
                component.append(member)
            if component:
                found.append(sorted([module, *component]))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_two_modules_import_each_other_even_through_others_or_inside_functions():
    # a package's __init__ counts as a module of its own, so a registry in a package that its members import
    # shows here; imports inside functions count (grimp reads them all), those under TYPE_CHECKING do not
    graph = grimp.build_graph("cnnkit", exclude_type_checking_imports=True)
    assert cycles(graph) == []


def test_the_cycle_check_finds_a_cycle():
    graph = grimp.ImportGraph()
    for importer, imported in [("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")]:
        graph.add_import(importer=importer, imported=imported)
    assert cycles(graph) == [["a", "b", "c"]]


def parameters(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    args = node.args
    names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
    names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
    return [n for n in names if n not in ("self", "cls")]


def test_no_module_is_over_400_lines():
    long = {
        str(p.relative_to(SOURCE)): n
        for p in SOURCE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_function_takes_more_than_7_parameters():
    crowded = []
    for path in SOURCE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and len(parameters(node)) > MAX_PARAMETERS:
                crowded.append(f"{path.relative_to(SOURCE)}:{node.lineno} {node.name}{tuple(parameters(node))}")
    assert crowded == []
