"""The package's imports run one way: no module imports, at its top or inside
a function (or under TYPE_CHECKING), a module that imports it back, however
long the way round. docs/design.md ("Layers") draws the layers this keeps."""

from __future__ import annotations

import ast

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
    assert "dask_backend" in graph["program"]  # function-local imports count
    assert cycle(graph) is None


def test_the_design_names_every_module():
    """docs/design.md's table gives each module of the package its job: a new
    module gets a row there (`name.py` in backquotes)."""
    design = (REPO / "docs" / "design.md").read_text("utf-8")
    unnamed = sorted(path.name for path in PACKAGE.glob("*.py") if f"`{path.name}`" not in design)
    assert unnamed == []


def drawn_layers() -> dict[str, int]:
    """docs/design.md's Layers drawing: each module -> the number of its line."""
    design = (REPO / "docs" / "design.md").read_text("utf-8")
    drawing = design.split("### Layers", 1)[1].split("```text\n", 1)[1].split("```", 1)[0]
    layers: dict[str, int] = {}
    for line in drawing.splitlines():
        level, names = line.split(None, 1)
        for name in names.split(", "):
            assert name not in layers, f"`{name}` is drawn twice in docs/design.md's Layers"
            layers[name] = int(level)
    return layers


def upward(graph: dict[str, set[str]], layers: dict[str, int]) -> list[str]:
    """The imports that do not run down the layers: to a module on the same line or a higher one."""
    return sorted(f"{a} ({layers[a]}) imports {b} ({layers[b]})" for a in graph for b in graph[a]
                  if layers[b] >= layers[a])


def test_the_finder_sees_an_import_up_or_across():
    assert upward({"a": {"b"}, "b": set(), "c": {"a"}}, {"a": 1, "b": 1, "c": 0}) == \
        ["a (1) imports b (1)", "c (0) imports a (1)"]
    assert upward({"a": {"b"}, "b": set()}, {"a": 1, "b": 0}) == []


def test_imports_run_down_the_drawn_layers():
    """docs/design.md's Layers drawing shows every module once, and every
    import, function-local ones included, runs to a module on a lower line."""
    graph, layers = imports(), drawn_layers()
    assert sorted(layers) == sorted(graph), "draw each module of the package once in docs/design.md's Layers"
    assert upward(graph, layers) == [], "move the importing module up a line in docs/design.md's Layers"


# In lines. The op table, many small entries side by side, is the exception.
LARGEST_MODULE = 450


def test_no_module_but_the_op_table_is_over_450_lines():
    """A module does one job, which its name says: one that grows past 450
    lines is split by job (issue 20), each part with its row in
    docs/design.md and its place in the Layers drawing."""
    sizes = {path.name: len(path.read_text("utf-8").splitlines()) for path in PACKAGE.glob("*.py")}
    assert sizes["ops.py"] > LARGEST_MODULE  # the package was read, and the exception is real
    assert {name: n for name, n in sizes.items() if n > LARGEST_MODULE and name != "ops.py"} == {}
