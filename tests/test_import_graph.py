"""The package's import graph, read from the source.

* The module-level imports of ``prefect_batch`` form no cycle: every module can be imported
  first, on its own, and the layers import one way. Imports under ``if TYPE_CHECKING:`` do not
  run and are left out; ``from x import y`` counts as an import of ``x.y`` when ``y`` is a
  module of the package, and of ``x`` otherwise.
* Nothing in ``prefect_batch/service/`` imports a ``prefect_batch`` module inside a function:
  such imports are how a cycle hides. Third-party optional modules (``prefect``...) imported
  inside functions are fine.
* ``prefect_batch/service/`` is in layers that import one way: ``engine`` -> ``ops`` ->
  ``rows`` -> the store, core and providers. Nothing in ``rows`` imports ``ops`` or the engine,
  nothing in ``ops`` imports the engine, and no module under ``prefect_batch/providers/``,
  ``store/`` or ``core/`` imports the service.

The checkers work on source text, so the self-tests below feed them bad code and expect findings.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "prefect_batch"
SERVICE = PACKAGE / "service"


def _module_name(path: Path, root: Path) -> str:
    """``<root>/prefect_batch/service/ops/jobs.py`` -> ``prefect_batch.service.ops.jobs``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The imports that run when the module is imported: at the top level and inside top-level
    ``if``/``try``/``with`` blocks and class bodies, but not in functions or under
    ``if TYPE_CHECKING:``."""
    for stmt in body:
        if isinstance(stmt, ast.Import | ast.ImportFrom):
            yield stmt
        elif isinstance(stmt, ast.If):
            if not _is_type_checking(stmt.test):
                yield from _module_level(stmt.body)
            yield from _module_level(stmt.orelse)
        elif isinstance(stmt, ast.Try):
            for block in (stmt.body, stmt.orelse, stmt.finalbody):
                yield from _module_level(block)
            for handler in stmt.handlers:
                yield from _module_level(handler.body)
        elif isinstance(stmt, ast.With | ast.ClassDef):
            yield from _module_level(stmt.body)


def _targets(
    node: ast.Import | ast.ImportFrom, module: str, is_package: bool, known: set[str]
) -> Iterator[str]:
    """The package modules an import statement in ``module`` loads."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
        return
    if node.level:
        package = module.split(".") if is_package else module.split(".")[:-1]
        base = package[: len(package) - (node.level - 1)]
        if node.module:
            base = [*base, *node.module.split(".")]
        source = ".".join(base)
    else:
        source = node.module or ""
    yield source
    for alias in node.names:
        if f"{source}.{alias.name}" in known:
            yield f"{source}.{alias.name}"


def import_graph(sources: Mapping[str, tuple[str, bool]]) -> dict[str, set[str]]:
    """``{module: {package modules it imports at module level}}`` for ``{module: (source,
    is_package)}``. An import of ``a.b.c`` also loads ``a`` and ``a.b``."""
    known = set(sources)
    graph: dict[str, set[str]] = {}
    for module, (source, is_package) in sources.items():
        edges: set[str] = set()
        for node in _module_level(ast.parse(source, module).body):
            for target in _targets(node, module, is_package, known):
                parts = target.split(".")
                for end in range(1, len(parts) + 1):
                    name = ".".join(parts[:end])
                    if name in known and name != module:
                        edges.add(name)
        graph[module] = edges
    # A module's parent packages are already being imported when it runs: no cycle through them.
    for module, edges in graph.items():
        edges.difference_update(
            ".".join(module.split(".")[:end]) for end in range(1, module.count(".") + 1)
        )
    return graph


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None``."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = [start]
        on_path = {start}
        stack = [iter(sorted(graph[start]))]
        while stack:
            following = next(stack[-1], None)
            if following is None:
                stack.pop()
                finished = path.pop()
                done.add(finished)
                on_path.discard(finished)
                continue
            if following in on_path:
                return [*path[path.index(following) :], following]
            if following in done or following not in graph:
                continue
            path.append(following)
            on_path.add(following)
            stack.append(iter(sorted(graph[following])))
    return None


def function_level_imports(source: str, filename: str) -> list[str]:
    """``file:line: imports x`` for every ``prefect_batch`` import inside a function."""
    found: list[str] = []
    tree = ast.parse(source, filename)
    for func in ast.walk(tree):
        if not isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = ["." * node.level + (node.module or "")]
            else:
                continue
            for name in names:
                # A relative import stays inside the package.
                if name.startswith(".") or name.split(".")[0] == "prefect_batch":
                    found.append(f"{filename}:{node.lineno}: imports {name}")
    return sorted(set(found))


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _package_sources() -> dict[str, tuple[str, bool]]:
    return {
        _module_name(path, ROOT): (path.read_text(encoding="utf-8"), path.name == "__init__.py")
        for path in _sources(PACKAGE)
    }


# --- the real tree -------------------------------------------------------------------------------


def test_module_level_imports_have_no_cycle() -> None:
    graph = import_graph(_package_sources())
    assert "prefect_batch.service.ops.jobs" in graph  # the walk found the package
    assert "prefect_batch.store" in graph["prefect_batch.service.ops.jobs"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_service_imports_the_package_only_at_module_level() -> None:
    files = _sources(SERVICE)
    assert SERVICE / "ops" / "jobs.py" in files
    problems = [
        problem
        for path in files
        for problem in function_level_imports(
            path.read_text(encoding="utf-8"), str(path.relative_to(ROOT))
        )
    ]
    assert problems == []


LAYERS = ("engine", "ops", "rows")
"""The service's layers, top first: each may import the ones after it, never those before."""


def layer_violations(graph: Mapping[str, set[str]]) -> list[str]:
    """``module -> import`` for every import that runs against the layers."""

    def layer(module: str) -> int | None:
        parts = module.split(".")
        if parts[:2] == ["prefect_batch", "service"] and len(parts) > 2 and parts[2] in LAYERS:
            return LAYERS.index(parts[2])
        return None

    below_service = ("prefect_batch.providers", "prefect_batch.store", "prefect_batch.core")
    found = []
    for module, imports in graph.items():
        mine = layer(module)
        for imported in imports:
            theirs = layer(imported)
            if mine is not None and theirs is not None and theirs < mine:
                found.append(f"{module} -> {imported}")
            elif module.startswith(below_service) and imported.startswith("prefect_batch.service"):
                found.append(f"{module} -> {imported}")
    return sorted(found)


def test_service_layers_import_one_way() -> None:
    graph = import_graph(_package_sources())
    assert {m for m in graph if m.startswith("prefect_batch.service.")} >= {
        "prefect_batch.service.engine.loop",
        "prefect_batch.service.ops.jobs",
        "prefect_batch.service.rows.statewrites",
    }
    assert layer_violations(graph) == []


def test_layer_violations_are_found() -> None:
    graph = _graph(
        prefect_batch__service__rows__a="from prefect_batch.service.ops import b\n",
        prefect_batch__service__ops__b="from prefect_batch.service.engine import c\n",
        prefect_batch__service__engine__c="from prefect_batch.service.rows import a\n",
        prefect_batch__store__d="import prefect_batch.service.rows.a\n",
    )
    assert layer_violations(graph) == [
        "prefect_batch.service.ops.b -> prefect_batch.service.engine.c",
        "prefect_batch.service.rows.a -> prefect_batch.service.ops.b",
        "prefect_batch.store.d -> prefect_batch.service.rows.a",
    ]


# --- the checkers catch what they should ---------------------------------------------------------


def _graph(**modules: str) -> dict[str, set[str]]:
    return import_graph(
        {name.replace("__", "."): (source, False) for name, source in modules.items()}
    )


@pytest.mark.parametrize(
    "modules",
    [
        {"p__a": "import p.b", "p__b": "import p.a"},
        {"p__a": "from p import b", "p__b": "from p.a import f"},
        {"p__a": "from p.b import f", "p__b": "from p.c import g", "p__c": "from . import a"},
        {
            "p__a": "try:\n    from p.b import f\nexcept ImportError:\n    pass",
            "p__b": "import p.a",
        },
        {"p__a": "if X:\n    import p.b", "p__b": "from .a import f"},
        {"p__a": "class C:\n    from p.b import f", "p__b": "import p.a"},
    ],
)
def test_cycle_checker_flags(modules: dict[str, str]) -> None:
    cycle = find_cycle(_graph(**modules))
    assert cycle is not None
    assert cycle[0] == cycle[-1]


@pytest.mark.parametrize(
    "modules",
    [
        {"p__a": "import p.b", "p__b": "import os"},
        {
            "p__a": "from p.b import f",
            "p__b": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.a import g",
        },
        {"p__a": "from p.b import f", "p__b": "def h():\n    from p.a import g"},
        {
            "p__a": "from p.b import f",
            "p__b": "import typing\nif typing.TYPE_CHECKING:\n    import p.a",
        },
    ],
)
def test_cycle_checker_accepts(modules: dict[str, str]) -> None:
    assert find_cycle(_graph(**modules)) is None


def test_cycle_checker_names_the_cycle() -> None:
    graph = _graph(p__a="from p.b import f", p__b="from p.c import g", p__c="import p.b")
    assert find_cycle(graph) == ["p.b", "p.c", "p.b"]


@pytest.mark.parametrize(
    "source",
    [
        "def f():\n    from prefect_batch.service.ops.jobs import JobOperations",
        "def f():\n    import prefect_batch.store",
        "class C:\n    def m(self):\n        from .jobs import queue_dir_deletion",
        "async def f():\n    from .. import models",
    ],
)
def test_function_import_checker_flags(source: str) -> None:
    assert function_level_imports(source, "bad.py")


@pytest.mark.parametrize(
    "source",
    [
        "from prefect_batch.store import Store\ndef f():\n    return Store",
        "def f():\n    from prefect.client.orchestration import get_client",
        "def f():\n    import paramiko",
    ],
)
def test_function_import_checker_accepts(source: str) -> None:
    assert function_level_imports(source, "good.py") == []
