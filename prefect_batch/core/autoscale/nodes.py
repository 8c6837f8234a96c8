"""The syntax tree of an autoscale formula: frozen dataclasses, one per construct.

The parser builds these from the text; the compiler checks and runs them. Nodes say what was
written, not what it means: a :class:`Name` may turn out to be a user variable, a service
variable or a constant such as ``TimeInterval_Minute``, and that is the compiler's call (names
are case-insensitive, so ``Name.key`` is the lower-cased form every lookup uses).

Every node has the 1-based ``line`` and ``column`` where it starts, except:

* :class:`Binary` and :class:`Unary` point at their operator, :class:`Conditional` at its ``?``,
  :class:`Member` and :class:`MethodCall` at the member's name -- the places an error about them
  is best shown;
* statements also carry where they end, which the parser needs for the newline rule.

This module holds data only; it does not parse, check or evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Assignment",
    "Binary",
    "Call",
    "CallStatement",
    "Conditional",
    "Expression",
    "Formula",
    "Member",
    "MethodCall",
    "Name",
    "Number",
    "Statement",
    "String",
    "Unary",
    "Vector",
]


@dataclass(frozen=True, slots=True, kw_only=True)
class _Node:
    """Where a node is in the formula text."""

    line: int
    column: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Number(_Node):
    """A numeric literal: ``12``, ``0.7``, ``.5``, ``1e3`` (always a double)."""

    value: float


@dataclass(frozen=True, slots=True, kw_only=True)
class String(_Node):
    """A double-quoted string literal, without its quotes (no escapes exist)."""

    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Vector(_Node):
    """A vector literal ``[1, 2, 3]`` -- our extension, written as results print a doubleVec."""

    items: tuple[Expression, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Name(_Node):
    """A bare or ``$``-prefixed name: a variable or, bare only, a constant.

    Attributes:
        name: The name as written, without the ``$``.
        dollar: Whether it was written with a ``$``.
    """

    name: str
    dollar: bool

    @property
    def key(self) -> str:
        """The case-insensitive identity of the name (``$x`` and ``x`` are the same variable)."""
        return self.name.lower()

    @property
    def text(self) -> str:
        """The name as written, ``$`` included."""
        return f"${self.name}" if self.dollar else self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class Unary(_Node):
    """``-operand`` or ``!operand``."""

    op: str
    operand: Expression


@dataclass(frozen=True, slots=True, kw_only=True)
class Binary(_Node):
    """``left op right`` for the arithmetic, comparison and logical operators."""

    op: str
    left: Expression
    right: Expression


@dataclass(frozen=True, slots=True, kw_only=True)
class Conditional(_Node):
    """``condition ? if_true : if_false`` (condition nonzero means true)."""

    condition: Expression
    if_true: Expression
    if_false: Expression


@dataclass(frozen=True, slots=True, kw_only=True)
class Call(_Node):
    """A function call ``name(args)``; ``function`` is the name as written."""

    function: str
    args: tuple[Expression, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class Member(_Node):
    """``target.member``: a timestamp's ``hour``, ``weekday``..."""

    target: Expression
    member: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MethodCall(_Node):
    """``target.method(args)``: a sample method such as ``$CPUPercent.GetSample(...)``."""

    target: Expression
    method: str
    args: tuple[Expression, ...]


Expression = (
    Number | String | Vector | Name | Unary | Binary | Conditional | Call | Member | MethodCall
)
"""Any expression node."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Assignment(_Node):
    """``target = value``; the statement starts at its target."""

    target: Name
    value: Expression
    end_line: int
    end_column: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CallStatement(_Node):
    """A function call on its own, evaluated for its effect: ``stop();``."""

    call: Call
    end_line: int
    end_column: int


Statement = Assignment | CallStatement
"""Any statement node."""


@dataclass(frozen=True, slots=True)
class Formula:
    """A parsed formula: its statements in order, and the text they came from."""

    statements: tuple[Statement, ...]
    source: str
