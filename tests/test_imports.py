"""The shape of the packages: no import cycle anywhere in them, and a core that knows no
application (translation jobs are an extension, installed by name)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import vpsweb_tasks
import vpsweb_tasks_http


def modules_of(package: Path) -> dict[str, Path]:
    """Every module of ``package`` (a folder) by its dotted name."""
    found = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def import_graph(package: Path) -> dict[str, set[str]]:
    """Which modules of ``package`` each of its modules imports: every import statement,
    at the top, in a function or under ``if TYPE_CHECKING``."""
    modules = modules_of(package)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        imported: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join([*base, *([node.module] if node.module else [])])
                for alias in node.names:
                    sub = f"{module}.{alias.name}"
                    imported.add(sub if sub in modules else module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = {each for each in imported if each in modules and each != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("package", [vpsweb_tasks, vpsweb_tasks_http])
def test_no_import_cycles(package: object) -> None:
    root = Path(package.__file__).parent  # type: ignore[attr-defined]
    assert cycles(import_graph(root)) == []


def test_a_cycle_is_found(tmp_path: Path) -> None:
    """The check itself: a cycle through a function-level import is one."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from .. import a\n")
    (package / "c.py").write_text("from . import a\n")
    assert cycles(import_graph(package)) == [["pkg.a", "pkg.sub.b"]]


def test_the_core_imports_nothing_of_the_translation_extension() -> None:
    root = Path(vpsweb_tasks.__file__).parent
    graph = import_graph(root)
    core = {name for name in graph if not name.startswith("vpsweb_tasks.translation")}
    assert {
        (name, imported)
        for name in core
        for imported in graph[name]
        if imported.startswith("vpsweb_tasks.translation")
    } == set()
    # Nor does it load it: a manager and the CLI run without it until it is installed.
    code = (
        "import sys, vpsweb_tasks, vpsweb_tasks.cli, vpsweb_tasks.monitor\n"
        "vpsweb_tasks.TaskManager(vpsweb_tasks.load_config())\n"
        "sys.exit(any(m.startswith('vpsweb_tasks.translation') for m in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
