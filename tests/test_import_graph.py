"""The module graph, read from the source (ast, no imports run): every `import` of a project module,
at top level and inside functions, is an edge. The layering README's "Layout" describes holds:
no cycle, and nothing under exports/ or models/ (the deployment side) imports harness."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("harness", "exports", "models")


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict) -> dict[str, list[tuple[int, bool]]]:
    """Project modules `name` imports -> [(line, inside a function)]. `from P import x` is an edge
    to P.x when that is a module, else to P; relative imports are resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node) if n is not node)
    edges: dict[str, list[tuple[int, bool]]] = {}

    def add(target: str, node) -> None:
        while target and target not in known:  # a.b.c -> the module that defines it
            target = target.rpartition(".")[0]
        entry = (node.lineno, id(node) in in_function)
        if target and target != name and entry not in edges.get(target, []):
            edges.setdefault(target, []).append(entry)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                package = package[:len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in known else base, node)
    return edges


def graph(root: Path) -> dict[str, dict[str, list[tuple[int, bool]]]]:
    known = modules(root)
    return {name: imports(name, path, known) for name, path in known.items()}


def cycles(g: dict) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def project_graph():
    return graph(REPO)


def _describe(g: dict, comp: list[str]) -> str:
    return "; ".join(f"{a} -> {b} (line {', '.join(str(n) + (' in a function' if f else '') for n, f in g[a][b])})"
                     for a in comp for b in g[a] if b in comp)


def test_the_graph_is_read(project_graph):
    """The reader finds the edges it must: a top-level one, a function-level one, a relative-free
    `from package import module` one (guards against a parser that finds nothing and passes)."""
    assert "harness.run_folder" in project_graph["harness.train"]
    assert any(inside for _, inside in project_graph["harness.cli"]["harness.train"])
    assert "harness.bench.stats" in project_graph["harness.bench.records"]
    assert len(project_graph) > 60


def test_no_import_cycle(project_graph):
    """Imports inside functions count: one placed there to dodge a cycle is still a cycle."""
    found = cycles(project_graph)
    assert not found, "import cycles: " + " | ".join(_describe(project_graph, c) for c in found)


def test_deployment_side_never_imports_harness(project_graph):
    bad = [f"{a} -> {b}" for a, deps in project_graph.items() if a.split(".")[0] in ("exports", "models")
           for b in deps if b.split(".")[0] == "harness"]
    assert not bad, f"exports/ and models/ must not import harness: {bad}"


def test_the_checks_catch_what_they_check(tmp_path):
    """A planted cycle (one edge inside a function) and an upward import are both reported."""
    for pkg, files in {"harness": {"a.py": "from harness import b\n",
                                   "b.py": "def f():\n    from harness.a import x\n"},
                       "exports": {"e.py": "import harness.a\n"}, "models": {}}.items():
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "__init__.py").write_text("")
        for name, text in files.items():
            (tmp_path / pkg / name).write_text(text)
    g = graph(tmp_path)
    assert cycles(g) == [["harness.a", "harness.b"]]
    assert g["harness.b"]["harness.a"] == [(2, True)]
    assert "harness.a" in g["exports.e"]
