"""The shape of the package: no import circles, small files and functions, a readable tree.

Read from the source with ``ast``, so lazy imports inside functions count as much as the
ones at the top; only ``if TYPE_CHECKING:`` imports (never run) are left out.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import {{ cookiecutter.package_name }}

PACKAGE = Path({{ cookiecutter.package_name }}.__file__).parent
NAME = PACKAGE.name
MAX_FILE_LINES = 450
MAX_FUNCTION_LINES = 60
MAX_RESILIENCE_MODULES = 10


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node but those under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules ``name`` imports when it runs (``from . import x`` included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        found.update(t for t in targets if t in known and t != name)
    return found


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as the modules along it, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_circles() -> None:
    found = modules()
    known = set(found)
    graph = {name: imported_modules(name, path, known) for name, path in found.items()}
    # a package's __init__ importing its own modules is how packages are made, not a circle
    for name in graph:
        graph[name] = {m for m in graph[name] if not name.startswith(m + ".")}
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_no_file_over_450_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path in modules().values()
        if (n := len(path.read_text().splitlines())) > MAX_FILE_LINES
    }
    assert long == {}


def test_no_function_over_60_lines() -> None:
    long = {}
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(PACKAGE)}:{node.name}"] = lines
    assert long == {}


def test_resilience_is_grouped_by_promise() -> None:
    direct = sorted(
        p.stem for p in (PACKAGE / "resilience").glob("*.py") if p.name != "__init__.py"
    )
    assert len(direct) <= MAX_RESILIENCE_MODULES, direct


def test_the_checker_sees_a_lazy_circle_and_skips_type_checking(tmp_path: Path) -> None:
    sources = {
        "a": "def later():\n    from . import b\n",
        "b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import c\n"
        "from .a import later\n",
        "c": "from . import b\n",
    }
    known = {f"p.{name}" for name in sources}
    graph = {}
    for name, text in sources.items():
        (tmp_path / f"{name}.py").write_text(text)
        graph[f"p.{name}"] = imported_modules(f"p.{name}", tmp_path / f"{name}.py", known)
    assert graph == {"p.a": {"p.b"}, "p.b": {"p.a"}, "p.c": {"p.b"}}
    assert find_cycle(graph) == ["p.a", "p.b", "p.a"]
    graph["p.b"] = set()
    assert find_cycle(graph) is None
