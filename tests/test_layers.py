"""The package's imports run one way: no module imports, at its top or inside
a function (or under TYPE_CHECKING), a module that imports it back, however
long the way round. docs/design.md ("Layers") draws the layers this keeps."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "spiread_cli"


def imports() -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports anywhere in it."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for module in modules:
        tree = ast.parse((PACKAGE / f"{module}.py").read_text("utf-8"))
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [alias.name for alias in node.names]
                found |= {name.split(".")[0] for name in names}
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                found |= {n.split(".")[1] for n in names if n and n.startswith("spiread_cli.")}
        graph[module] = (found & modules) - {module}
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of imports, as the modules along it, or None (depth-first, no recursion)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if start in state:
            continue
        path, pending = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while pending:
            following = next(pending[-1], None)
            if following is None:
                state[path.pop()] = 2
                pending.pop()
            elif state.get(following) == 1:
                return path[path.index(following):] + [following]
            elif following not in state:
                state[following] = 1
                path.append(following)
                pending.append(iter(sorted(graph[following])))
    return None


def test_the_finder_finds_a_cycle_however_long():
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_module_imports_one_that_imports_it_back():
    graph = imports()
    assert {"ops", "tape", "interpreter", "cli", "dask_backend"} <= set(graph)  # the package was read
    assert "dask_backend" in graph["cli_session"]  # function-local imports count
    assert cycle(graph) is None


def test_the_design_names_every_module():
    """docs/design.md's table gives each module of the package its job: a new
    module gets a row there (`name.py` in backquotes)."""
    design = (REPO / "docs" / "design.md").read_text("utf-8")
    unnamed = sorted(path.name for path in PACKAGE.glob("*.py") if f"`{path.name}`" not in design)
    assert unnamed == []
