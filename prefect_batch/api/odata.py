"""The OData query options of list and get operations: ``$filter``, ``$select``, paging.

``$filter`` — the common subset Azure Batch users write::

    state eq 'active'
    state eq 'completed' and executionInfo/result eq 'failure'
    (state eq 'running' or state eq 'preparing') and not startswith(id, 'setup')
    startswith(id,'frame-') or id eq 'final'
    priority ge 100
    creationTime gt datetime'2026-01-01T00:00:00Z'

Operators ``eq ne gt ge lt le``, ``and or not``, parentheses, ``startswith(prop, 'x')`` and
``endswith(prop, 'x')``; literals are '...' strings (``''`` escapes a quote), integers and
decimals, ``true``/``false``/``null`` and ``datetime'...'``. A property is a wire name, nested with
``/`` (``executionInfo/exitCode``). A filter is evaluated on the wire JSON of each resource; for
tasks the states it allows are also pushed into the database query.

``$select`` keeps the named top-level properties. Paging: ``maxresults`` (1-1000, default 1000)
items per page and an opaque ``$skiptoken`` in ``odata.nextLink``.

Pure functions over strings and dicts: no I/O, nothing from FastAPI.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from prefect_batch.api.errors import invalid_query

__all__ = [
    "DEFAULT_MAX_RESULTS",
    "MAX_MAX_RESULTS",
    "Filter",
    "decode_token",
    "encode_token",
    "page",
    "parse_filter",
    "parse_max_results",
    "parse_select",
    "select",
]

MAX_FILTER_LENGTH = 4096
"""Longest ``$filter`` accepted (characters)."""
DEFAULT_MAX_RESULTS = 1000
MAX_MAX_RESULTS = 1000
_COMPARISONS = frozenset({"eq", "ne", "gt", "ge", "lt", "le"})
_FUNCTIONS = frozenset({"startswith", "endswith"})

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<dt>datetime'(?:[^']|'')*')
      | (?P<str>'(?:[^']|'')*')
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:/[A-Za-z_][A-Za-z0-9_]*)*)
      | (?P<punct>[(),])
    )""",
    re.VERBOSE,
)


# -- the filter AST -------------------------------------------------------------------------


@dataclass(frozen=True)
class Prop:
    """A property path of the resource (``executionInfo/result``)."""

    path: tuple[str, ...]


@dataclass(frozen=True)
class Lit:
    """A literal value."""

    value: Any


@dataclass(frozen=True)
class Compare:
    """``left op right``."""

    op: str
    left: Prop | Lit
    right: Prop | Lit


@dataclass(frozen=True)
class Call:
    """``startswith(a, b)`` / ``endswith(a, b)``."""

    name: str
    args: tuple[Prop | Lit, Prop | Lit]


@dataclass(frozen=True)
class BoolOp:
    """``and`` / ``or`` of two expressions."""

    op: str
    left: Node
    right: Node


@dataclass(frozen=True)
class Not:
    """``not expr``."""

    expr: Node


Node = Compare | Call | BoolOp | Not


class _FilterSyntaxError(ValueError):
    pass


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise _FilterSyntaxError(f"unexpected text at position {pos}: {text[pos : pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise _FilterSyntaxError("unexpected end of the filter")
        self.i += 1
        return tok

    def keyword(self, word: str) -> bool:
        tok = self.peek()
        if tok is not None and tok[0] == "name" and tok[1].lower() == word:
            self.i += 1
            return True
        return False

    def expect(self, punct: str) -> None:
        tok = self.take()
        if tok != ("punct", punct):
            raise _FilterSyntaxError(f"expected {punct!r}, found {tok[1]!r}")

    def parse(self) -> Node:
        node = self.or_expr()
        if self.peek() is not None:
            raise _FilterSyntaxError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return node

    def or_expr(self) -> Node:
        node = self.and_expr()
        while self.keyword("or"):
            node = BoolOp("or", node, self.and_expr())
        return node

    def and_expr(self) -> Node:
        node = self.not_expr()
        while self.keyword("and"):
            node = BoolOp("and", node, self.not_expr())
        return node

    def not_expr(self) -> Node:
        if self.keyword("not"):
            return Not(self.not_expr())
        return self.primary()

    def primary(self) -> Node:
        tok = self.peek()
        if tok == ("punct", "("):
            self.take()
            node = self.or_expr()
            self.expect(")")
            return node
        if tok is not None and tok[0] == "name" and tok[1].lower() in _FUNCTIONS:
            nxt = self.toks[self.i + 1] if self.i + 1 < len(self.toks) else None
            if nxt == ("punct", "("):
                self.i += 2
                first = self.operand()
                self.expect(",")
                second = self.operand()
                self.expect(")")
                return Call(tok[1].lower(), (first, second))
        left = self.operand()
        op = self.take()
        if op[0] != "name" or op[1].lower() not in _COMPARISONS:
            raise _FilterSyntaxError(f"expected a comparison (eq, ne, gt...), found {op[1]!r}")
        return Compare(op[1].lower(), left, self.operand())

    def operand(self) -> Prop | Lit:
        kind, text = self.take()
        if kind == "str":
            return Lit(text[1:-1].replace("''", "'"))
        if kind == "dt":
            raw = text[len("datetime'") : -1].replace("''", "'")
            try:
                return Lit(_as_datetime(raw, strict=True))
            except ValueError as exc:
                raise _FilterSyntaxError(f"bad datetime literal {raw!r}") from exc
        if kind == "num":
            return Lit(float(text) if "." in text else int(text))
        if kind == "name":
            word = text.lower()
            if word in ("true", "false"):
                return Lit(word == "true")
            if word == "null":
                return Lit(None)
            return Prop(tuple(text.split("/")))
        raise _FilterSyntaxError(f"expected a property or a value, found {text!r}")


def _as_datetime(value: Any, *, strict: bool = False) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            if strict:
                raise
            return None
        return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
    if strict:
        raise ValueError(value)
    return None


def _lookup(item: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = item
    for part in path:
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _compare(op: str, left: Any, right: Any) -> bool:
    if isinstance(left, datetime) or isinstance(right, datetime):
        left, right = _as_datetime(left), _as_datetime(right)
    if op == "eq":
        return bool(left == right)
    if op == "ne":
        return bool(left != right)
    if left is None or right is None:
        return False
    try:
        if op == "gt":
            return bool(left > right)
        if op == "ge":
            return bool(left >= right)
        if op == "lt":
            return bool(left < right)
        return bool(left <= right)
    except TypeError:
        return False


def _value(operand: Prop | Lit, item: dict[str, Any]) -> Any:
    return _lookup(item, operand.path) if isinstance(operand, Prop) else operand.value


def _evaluate(node: Node, item: dict[str, Any]) -> bool:
    if isinstance(node, Compare):
        return _compare(node.op, _value(node.left, item), _value(node.right, item))
    if isinstance(node, Call):
        a, b = (_value(x, item) for x in node.args)
        if not isinstance(a, str) or not isinstance(b, str):
            return False
        return a.startswith(b) if node.name == "startswith" else a.endswith(b)
    if isinstance(node, Not):
        return not _evaluate(node.expr, item)
    if node.op == "and":
        return _evaluate(node.left, item) and _evaluate(node.right, item)
    return _evaluate(node.left, item) or _evaluate(node.right, item)


def _states(node: Node) -> frozenset[str] | None:
    """The values of ``state`` the expression can be true for (``None``: any)."""
    if isinstance(node, Compare) and node.op == "eq":
        sides = (node.left, node.right)
        props = [s for s in sides if isinstance(s, Prop)]
        lits = [s for s in sides if isinstance(s, Lit)]
        if len(props) == 1 and props[0].path == ("state",) and lits:
            value = lits[0].value
            return frozenset({value}) if isinstance(value, str) else frozenset()
        return None
    if isinstance(node, BoolOp):
        left, right = _states(node.left), _states(node.right)
        if node.op == "or":
            return None if left is None or right is None else left | right
        if left is None:
            return right
        return left if right is None else left & right
    return None


@dataclass(frozen=True)
class Filter:
    """A parsed ``$filter``."""

    text: str
    root: Node

    def __call__(self, item: dict[str, Any]) -> bool:
        """Whether the resource's wire JSON matches."""
        return _evaluate(self.root, item)

    @property
    def states(self) -> frozenset[str] | None:
        """The states a matching resource can be in, or ``None`` when the filter does not say."""
        return _states(self.root)


def parse_filter(text: str | None) -> Filter | None:
    """Parse ``$filter`` (``None`` or blank: no filter).

    Raises:
        BatchInvalidRequestError: ``InvalidQueryParameterValue`` naming ``$filter``.
    """
    if text is None or not text.strip():
        return None
    if len(text) > MAX_FILTER_LENGTH:
        raise invalid_query("$filter", text[:100] + "...", f"longer than {MAX_FILTER_LENGTH}")
    try:
        return Filter(text, _Parser(text).parse())
    except _FilterSyntaxError as exc:
        raise invalid_query("$filter", text, str(exc)) from exc
    except RecursionError as exc:  # parentheses nested beyond reason
        raise invalid_query("$filter", text[:100], "nested too deeply") from exc


# -- $select ------------------------------------------------------------------------------------


def parse_select(text: str | None) -> frozenset[str] | None:
    """``$select=id,state`` -> the property names (``None``: all)."""
    if text is None or not text.strip():
        return None
    names = [n.strip() for n in text.split(",")]
    if any(not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]*", n) for n in names):
        raise invalid_query("$select", text, "a comma-separated list of property names")
    return frozenset(names)


def select(item: dict[str, Any], names: frozenset[str] | None) -> dict[str, Any]:
    """Keep only the selected top-level properties of a wire resource."""
    if names is None:
        return item
    return {k: v for k, v in item.items() if k in names}


# -- paging -------------------------------------------------------------------------------------


def parse_max_results(value: int | None) -> int:
    """Validate ``maxresults`` (1-1000; default 1000)."""
    if value is None:
        return DEFAULT_MAX_RESULTS
    if not 1 <= value <= MAX_MAX_RESULTS:
        raise invalid_query("maxresults", value, f"must be between 1 and {MAX_MAX_RESULTS}")
    return value


def encode_token(marker: Any) -> str:
    """An opaque ``$skiptoken`` for a position in a list."""
    raw = json.dumps(marker, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_token(token: str | None) -> Any:
    """The position a ``$skiptoken`` stands for (``None`` for the first page)."""
    if not token:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise invalid_query("$skiptoken", token, "not a token this service issued") from exc


def page(
    items: Iterable[dict[str, Any]],
    key: Callable[[dict[str, Any]], Sequence[Any]],
    marker: Any,
    limit: int,
) -> tuple[list[dict[str, Any]], list[Any] | None]:
    """One page of an in-memory list ordered by ``key``: the items after ``marker``.

    The marker is the key of the last item of the previous page, so a page is stable when
    items are added or removed between requests. Returns the page and the next marker (``None``
    on the last page).
    """
    ordered = sorted(items, key=lambda it: list(key(it)))
    if marker is not None:
        try:
            ordered = [it for it in ordered if list(key(it)) > list(marker)]
        except TypeError as exc:  # a token of another list
            raise invalid_query("$skiptoken", marker, "not a token of this list") from exc
    chunk = ordered[:limit]
    more = len(ordered) > limit
    return chunk, (list(key(chunk[-1])) if more and chunk else None)
