"""The house's shape, held as a contract: rooms small enough to read, no import circle
(imports inside functions counted), and reports that only read."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "autocompress"
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250


def _modules() -> dict[str, tuple[Path, ast.Module]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = (path, ast.parse(path.read_text(), str(path)))
    return found


def _imports(name: str, path: Path, tree: ast.Module, modules: set[str]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its body: ``from a import b``
    counts module ``a.b`` when it is one, else ``a``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
            out.update(subs)
            if len(subs) < len(node.names) and base in modules:
                out.add(base)
    out.discard(name)
    return out


def test_no_module_or_class_is_too_big_to_read() -> None:
    big = []
    for name, (path, tree) in _modules().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            big.append(f"module {name}: {lines} lines")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and node.end_lineno is not None and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                big.append(f"class {name}.{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not big, big


def test_the_import_graph_has_no_circle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, tree, set(modules)) for name, (path, tree) in modules.items()}
    # Tarjan's strongly connected components: any with two or more modules is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    assert not circles, circles
    assert graph["autocompress.artifact.header"] & {"autocompress.artifact.loader", "autocompress.artifact.packer"} == set()


def test_the_header_reader_imports_no_torch() -> None:
    """``inspect`` and every reader of a file start at the header: no torch until a model is built."""
    modules = _modules()
    for name in ("autocompress.artifact.header", "autocompress.artifact.format", "autocompress.artifact.codec", "autocompress.artifact.streams"):
        _, tree = modules[name]
        roots = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
        roots |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and not node.level}
        assert "torch" not in roots, name
    # And at run time, everything they pull in together.
    code = "import sys, autocompress.artifact.header; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout.strip()
    assert out == "False"


def test_reports_only_read_the_study() -> None:
    """The re-check of the front is its own room; report and html_report never write."""
    for name in ("report", "html_report", "front_rows"):
        text = (PACKAGE / f"{name}.py").read_text()
        assert "set_user_attr" not in text and "recheck" not in text.replace("--recheck", ""), name
