"""The house's rules, read from the code: imports go down the layers, never round in a cycle.

Every import counts: at the top of a module, inside a function, under ``TYPE_CHECKING``. The
graph is built from the source with ``ast`` (nothing is imported), so a cycle hidden behind an
import inside a function fails here as surely as one at the top.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pipelinejobs"

#: The layers, front ends first: a module may import its own layer's modules and any lower layer's.
LAYERS: list[tuple[str, set[str]]] = [
    ("front ends", {"cli", "server", "demo", "client", "transports"}),
    ("the one way in", {"runtime"}),
    ("passes", {"watch", "retention"}),
    ("business", {"service"}),
    (
        "around the core",
        {"notify", "egress", "queries", "stategraph", "abaco", "deadlines", "auth", "messages", "intake"}
        | {"adapters", "message_types", "bundled_schemas", "sinks"},
    ),
    ("storage", {"store"}),
    (
        "leaves",
        {
            "errors",
            "logs",
            "settings",
            "settings_schema",
            "documents",
            "identifiers",
            "fsm",
            "limits",
            "jsontext",
            "schemacheck",
            "__init__",
        },
    ),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> Iterator[str]:
    """Every module of the package that ``path`` imports, wherever the import statement is."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names if alias.name.startswith("pipelinejobs"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            elif node.module and node.module.startswith("pipelinejobs"):
                target = node.module
            else:
                continue
            yield target
            for alias in node.names:  # `from . import service` imports the module pipelinejobs.service
                yield f"{target}.{alias.name}"


def graph() -> dict[str, set[str]]:
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges[name] = {target for target in imports_of(path) if target in modules and target != name}
    return edges


def group(module: str) -> str:
    """The first name under the package: ``pipelinejobs.store.mongo`` -> ``store``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def layer_of(module: str) -> int:
    for rank, (_, names) in enumerate(LAYERS):
        if group(module) in names:
            return rank
    raise AssertionError(f"{module} belongs to no layer: add its group to LAYERS in this test")


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_module_imports_round_in_a_cycle() -> None:
    assert cycles(graph()) == []


def test_every_import_goes_down_the_layers() -> None:
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) imports {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(graph().items())
        for target in sorted(targets)
        if layer_of(target) < layer_of(module)
    ]
    assert upward == []


def test_storage_never_imports_the_web_layer_or_the_cli() -> None:
    offending = [
        f"{module} imports {target}"
        for module, targets in graph().items()
        if group(module) == "store"
        for target in targets
        if group(target) in ("server", "cli")
    ]
    assert offending == []


def test_the_cycle_finder_finds_a_cycle_through_an_import_inside_a_function(tmp_path: Path) -> None:
    """The rules above can fail: a two-module cycle whose back edge is an import inside a function."""
    edges = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert cycles(edges) == [["a", "b"]]
    source = tmp_path / "pipelinejobs" / "x.py"
    source.parent.mkdir()
    source.write_text("def f():\n    from . import service\n", encoding="utf-8")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "pipelinejobs"
    try:
        assert set(imports_of(source)) == {"pipelinejobs", "pipelinejobs.service"}
    finally:
        PACKAGE = saved
