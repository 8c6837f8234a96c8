"""The architecture's boundaries, checked by reading the source.

* ``prefect_batch/core/`` is pure: it imports no I/O, network, cloud, web, database, clock or
  concurrency module, none of the package's I/O layers, and reads no clock
  (``datetime.now()``, ``date.today()``...). ``urllib.parse`` is the one part of a refused
  package it may use: it only splits and decodes strings.
* ``prefect_batch/agent/`` runs on nodes with nothing but Python: it imports only the standard
  library and its own modules. Relative imports must stay inside the agent package; an absolute
  ``prefect_batch.agent...`` import counts as its own too (``__main__.py`` runs from the
  installed package, where ``python -m`` has imported the parents anyway), while any other
  ``prefect_batch`` module is refused.

The checkers work on source text, so the self-tests below feed them bad code and expect findings:
a checker that can never fail proves nothing.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prefect_batch"
CORE = PACKAGE / "core"
AGENT = PACKAGE / "agent"

FORBIDDEN_IN_CORE = frozenset(
    {
        "paramiko",
        "boto3",
        "botocore",
        "prefect",
        "fastapi",
        "starlette",
        "uvicorn",
        "sqlalchemy",
        "httpx",
        "subprocess",
        "socket",
        "time",
        "threading",
        "asyncio",
        "os",
        "requests",
        # Beyond the list in DESIGN.md: other ways to reach processes, files, the network.
        "multiprocessing",
        "concurrent",
        "shutil",
        "urllib",
        "http",
        "ssl",
        "select",
        "selectors",
        "signal",
        "tempfile",
        "importlib",
    }
)
# Layers of this package that do I/O; importing one would make core impure by proxy.
FORBIDDEN_LAYERS_IN_CORE = frozenset(
    {
        "agent",
        "api",
        "blocks",
        "cli",
        "client",
        "flows",
        "providers",
        "service",
        "settings",
        "store",
        "testing",
    }
)
# Pure submodules of refused packages.
ALLOWED_IN_CORE = frozenset({"urllib.parse"})
CLOCK_METHODS = frozenset({"now", "utcnow", "today"})
CLOCK_CLASSES = frozenset({"datetime", "date"})
FORBIDDEN_CALLS = frozenset({"open", "__import__", "input", "exec", "eval"})


def _package_parts(path: Path) -> list[str]:
    """``prefect_batch/core/x.py`` -> ``["prefect_batch", "core"]`` (its package)."""
    return list(path.relative_to(PACKAGE.parent).parent.parts)


def _imports(tree: ast.AST, package: list[str]) -> Iterator[tuple[int, list[str], int]]:
    """Yield ``(line, absolute module parts, level)`` for every import in ``tree``.

    Relative imports are resolved against ``package``; ``from . import x`` yields ``.../x``.
    """
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name.split("."), 0
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = (node.module or "").split(".")
            else:
                keep = len(package) - (node.level - 1)
                base = package[: max(keep, 0)] + (node.module.split(".") if node.module else [])
                if keep < 0:
                    base = ["<beyond the top>"]
            if node.module is None:
                for alias in node.names:
                    yield node.lineno, [*base, alias.name], node.level
            else:
                yield node.lineno, base, node.level


def core_violations(source: str, filename: str, package: list[str]) -> list[str]:
    """Problems that make a core module impure."""
    tree = ast.parse(source, filename)
    found: list[str] = []
    for line, parts, _level in _imports(tree, package):
        top = parts[0]
        if ".".join(parts[:2]) in ALLOWED_IN_CORE:
            continue
        if top in FORBIDDEN_IN_CORE:
            found.append(f"{filename}:{line}: imports {'.'.join(parts)}")
        elif top == "prefect_batch" and len(parts) > 1 and parts[1] in FORBIDDEN_LAYERS_IN_CORE:
            found.append(f"{filename}:{line}: imports the I/O layer {'.'.join(parts[:2])}")

    clock_names = set(CLOCK_CLASSES)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module == "datetime":
            clock_names.update(a.asname for a in node.names if a.name in CLOCK_CLASSES and a.asname)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        if isinstance(func, ast.Name) and func.id in FORBIDDEN_CALLS:
            found.append(f"{filename}:{node.lineno}: calls {func.id}()")
        if isinstance(func, ast.Attribute) and func.attr in CLOCK_METHODS:
            owner = func.value
            if (isinstance(owner, ast.Name) and owner.id in clock_names) or (
                isinstance(owner, ast.Attribute) and owner.attr in CLOCK_CLASSES
            ):
                found.append(f"{filename}:{node.lineno}: reads the clock ({func.attr}())")
    return found


def agent_violations(source: str, filename: str, package: list[str]) -> list[str]:
    """Imports that would not be there on a node with only Python installed."""
    tree = ast.parse(source, filename)
    agent_root = ["prefect_batch", "agent"]
    found: list[str] = []
    for line, parts, level in _imports(tree, package):
        if parts[:2] == agent_root:
            continue  # its own modules, relative or (as in __main__.py) absolute
        if level > 0:
            found.append(f"{filename}:{line}: relative import leaves the agent package")
        elif parts[0] not in sys.stdlib_module_names:
            found.append(f"{filename}:{line}: imports {'.'.join(parts)} (not stdlib)")
    return found


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


# --- the real tree -------------------------------------------------------------------------------


def test_core_is_pure() -> None:
    files = _sources(CORE)
    assert CORE / "states.py" in files  # the walk found the package
    problems = [
        problem
        for path in files
        for problem in core_violations(
            path.read_text(encoding="utf-8"),
            str(path.relative_to(PACKAGE.parent)),
            _package_parts(path),
        )
    ]
    assert problems == []


def test_agent_uses_only_the_standard_library() -> None:
    assert AGENT.is_dir()
    problems = [
        problem
        for path in _sources(AGENT)
        for problem in agent_violations(
            path.read_text(encoding="utf-8"),
            str(path.relative_to(PACKAGE.parent)),
            _package_parts(path),
        )
    ]
    assert problems == []


# --- the checkers catch what they should ---------------------------------------------------------

CORE_PKG = ["prefect_batch", "core"]
AGENT_PKG = ["prefect_batch", "agent"]


@pytest.mark.parametrize(
    "source",
    [
        "import paramiko",
        "import os.path",
        "from subprocess import run",
        "import boto3 as b",
        "from prefect import flow",
        "import time",
        "from sqlalchemy.orm import Session",
        "def f():\n    import socket\n",
        "from prefect_batch.store import Store",
        "from .. import service",
        "from ..providers.ssh import SshProvider",
        "from datetime import datetime\nx = datetime.now()",
        "from datetime import datetime\nx = datetime.utcnow()",
        "from datetime import date\nx = date.today()",
        "import datetime\nx = datetime.datetime.now()",
        "from datetime import datetime as dt\nx = dt.now(tz=None)",
        "data = open('f').read()",
        "m = __import__('os')",
        "import urllib",
        "from urllib.request import urlopen",
        "from urllib import request",
    ],
)
def test_core_checker_flags(source: str) -> None:
    assert core_violations(source, "bad.py", CORE_PKG)


@pytest.mark.parametrize(
    "source",
    [
        "import heapq, shlex, re\nfrom dataclasses import dataclass",
        "from datetime import datetime, timedelta\ndef f(now: datetime) -> datetime:\n"
        "    return now + timedelta(seconds=1)",
        "from prefect_batch.exceptions import invalid_property",
        "from prefect_batch.core.states import TaskState",
        "from .states import TaskState",
        "from urllib.parse import parse_qs",
        "x = now.replace(microsecond=0)",  # a datetime passed in is fine
    ],
)
def test_core_checker_accepts(source: str) -> None:
    assert core_violations(source, "good.py", CORE_PKG) == []


@pytest.mark.parametrize(
    ("source", "package"),
    [
        ("import paramiko", AGENT_PKG),
        ("import prefect_batch.exceptions", AGENT_PKG),
        ("from prefect_batch.agentx import y", AGENT_PKG),
        ("from pydantic import BaseModel", AGENT_PKG),
        ("from .. import exceptions", AGENT_PKG),  # leaves the agent package
        ("from ...core import states", [*AGENT_PKG, "sub"]),
    ],
)
def test_agent_checker_flags(source: str, package: list[str]) -> None:
    assert agent_violations(source, "bad.py", package)


@pytest.mark.parametrize(
    ("source", "package"),
    [
        ("from __future__ import annotations\nimport json, os, subprocess, signal", AGENT_PKG),
        ("from . import protocol\nfrom .files import layout", AGENT_PKG),
        ("from .. import protocol", [*AGENT_PKG, "sub"]),
        ("import os.path\nfrom concurrent.futures import ThreadPoolExecutor", AGENT_PKG),
        ("from prefect_batch.agent.agent import main", AGENT_PKG),
    ],
)
def test_agent_checker_accepts(source: str, package: list[str]) -> None:
    assert agent_violations(source, "good.py", package) == []
