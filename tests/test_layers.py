"""The packages import downward only, with no cycles, and import inside functions only what is
heavy and optional.

Layers, bottom to top: ``grm`` (the judge) <- ``services`` (server, cache, client) <-
``policy`` (GRPO trainer, reward backends, adapters) <- ``spct`` (training the judge) <-
``grm_cli`` (the command line). The walk reads the source with ``ast``: nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("grm", "services", "policy", "spct", "grm_cli")
# What a function may import lazily: heavy third-party packages, and our modules that import
# torch (or ray) at the top (so that ``import grm`` and the command line's parser stay light).
LAZY_OK = {"torch", "transformers", "tokenizers", "sentencepiece", "matplotlib", "grpc_tools", "gguf", "peft",
           "trl", "datasets", "playwright", "ray", "grm.transformers_engine", "grm.meta_rm", "grm.prefix_cache",
           "policy.trainer", "services.ray_serve"}


def modules() -> dict[str, Path]:
    found = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            if "_pb2" in path.name:
                continue
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path) -> list[tuple[list[str], bool]]:
    """Per absolute import statement in ``path``: the names it may import (``from x import y``
    may import module ``x.y``), first the module itself, and whether it sits in a function."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inside |= {id(n) for n in ast.walk(node) if n is not node}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [([a.name], id(node) in inside) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append(([node.module] + [f"{node.module}.{a.name}" for a in node.names], id(node) in inside))
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()

    def resolve(name: str) -> str | None:
        parts = name.split(".")
        for i in range(len(parts), 0, -1):
            if ".".join(parts[:i]) in mods:
                return ".".join(parts[:i])
        return None
    return {m: {r for names, _ in imports(p) for name in names if (r := resolve(name)) and r != m}
            for m, p in mods.items()}


def layer(module: str) -> int:
    return LAYERS.index(module.split(".")[0])


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_module_imports_a_layer_above_it():
    upward = sorted((a, b) for a, bs in graph().items() for b in bs if layer(b) > layer(a))
    assert upward == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_imports_inside_functions_are_heavy_optional_ones():
    lazy = [f"{module}: {names[0]}" for module, path in modules().items() for names, in_function in imports(path)
            if in_function and not any(names[0] == ok or names[0].startswith(ok + ".") for ok in LAZY_OK)]
    assert lazy == []


@pytest.mark.parametrize("edge, expected", [({"a": {"b"}, "b": {"a"}}, [["a", "b"]]), ({"a": {"b"}, "b": set()}, [])])
def test_the_cycle_finder_finds_cycles(edge, expected):
    assert cycles(edge) == expected


def test_the_layer_walk_reads_real_edges():
    """The checks above would pass on an empty graph; show the walk reads real edges."""
    edges = graph()
    assert "grm.judge" in edges["grm_cli.score"] and "services.client" in edges["grm_cli.score"]
    assert layer("grm_cli.score") > layer("services.client") > layer("grm.judge")
