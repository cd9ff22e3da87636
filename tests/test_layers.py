"""The layers of DESIGN.md, checked on the source: imports go down only, no stage imports another, nothing below the
world knows it, and no two modules import each other (directly or round a circle, lazy imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "lit_rlhf"
STAGES = ("lit_rlhf.sft", "lit_rlhf.reward", "lit_rlhf.ppo", "lit_rlhf.dpo")
WORLD = "lit_rlhf.world"
ABOVE_THE_WORLD = ("lit_rlhf.world", "lit_rlhf.pipeline", "lit_rlhf.cli", "lit_rlhf.__main__")
"""The only modules that may import the world: the world itself and what runs it."""
LABEL = "lit_rlhf.label"
ABOVE_THE_LABEL = ("lit_rlhf.label", "lit_rlhf.cli", "lit_rlhf.__main__")
"""The labeling app is a data source beside the world: only it and the CLI that runs it import it."""


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str) -> set[str]:
    """The lit_rlhf modules ``name`` imports anywhere in its source (top level, in functions, under TYPE_CHECKING).

    ``from package import x`` names the submodule ``package.x`` when there is one, else ``package``; importing a
    submodule is not counted as importing its parent packages (Python runs their ``__init__`` either way).
    """
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..data import y
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            for alias in node.names:
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: imports_of(name) for name in MODULES}


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_graph_sees_the_package():
    # The checks below are vacuous if the walk found nothing: a few edges that must exist.
    assert len(MODULES) > 30
    assert "lit_rlhf.stage" in GRAPH["lit_rlhf.sft"]
    assert "lit_rlhf.data.records" in GRAPH["lit_rlhf.data.modules"]
    assert "lit_rlhf.world.build" in GRAPH["lit_rlhf.world"]


@pytest.mark.parametrize("stage", STAGES)
def test_no_stage_imports_another(stage):
    for name, imported in GRAPH.items():
        if within(name, (stage,)):
            others = sorted(m for m in imported if within(m, STAGES) and not within(m, (stage,)))
            assert not others, f"{name} (stage {stage}) imports another stage: {others}"


def test_nothing_below_the_world_imports_it():
    below = {
        name: sorted(m for m in imported if within(m, (WORLD,)))
        for name, imported in GRAPH.items()
        if not within(name, ABOVE_THE_WORLD)
    }
    below = {name: world for name, world in below.items() if world}
    assert not below, f"modules below the world import it: {below}"


def test_the_label_app_is_a_data_source_beside_the_world():
    # Nothing but the CLI knows it; it knows no stage, no world, no pipeline (it may use data, generation, models).
    importers = sorted(
        n
        for n, imported in GRAPH.items()
        if not within(n, ABOVE_THE_LABEL) and any(within(m, (LABEL,)) for m in imported)
    )
    assert not importers, f"modules that import lit_rlhf.label: {importers}"
    assert "lit_rlhf.label.cli" in GRAPH["lit_rlhf.cli"]
    forbidden = (*STAGES, WORLD, "lit_rlhf.pipeline", "lit_rlhf.pipeline_data", "lit_rlhf.stage_cli")
    for name, imported in GRAPH.items():
        if within(name, (LABEL,)):
            bad = sorted(m for m in imported if within(m, forbidden))
            assert not bad, f"{name} imports {bad}"


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components; a component of more than one module is an import circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
            components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def test_strongly_connected_finds_a_circle():
    # a -> b -> c -> a is one circle; d only points into it
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert sorted(strongly_connected(graph)) == [["a", "b", "c"], ["d"]]


def test_no_import_circles():
    circles = [c for c in strongly_connected(GRAPH) if len(c) > 1]
    assert not circles, f"modules that import each other (directly or round a circle): {circles}"
