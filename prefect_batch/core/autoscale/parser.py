"""From formula text to a syntax tree (:class:`~.nodes.Formula`), with Azure's limits.

:func:`parse_formula` checks, in order:

1. the size -- at most 8,192 characters (``AutoScaleFormulaTooLong``);
2. the syntax, against ``grammar.GRAMMAR`` (``AutoScalingFormulaSyntaxError`` naming the line
   and column of the first token that does not fit);
3. statement separation -- statements are separated by ``;``; a missing ``;`` is accepted
   where the next statement starts on a later line than the previous one ends (the last
   statement needs none). The CPU example in Azure's docs relies on this;
4. the number of statements -- at most 100 (``AutoScaleFormulaTooLong``); empty statements
   (``;;``) do not count, a formula without any statement is an error;
5. nesting -- an expression at most :data:`MAX_DEPTH` operators deep, so that checking and
   evaluating it cannot exhaust Python's stack.

It does not resolve names or check types: that is ``compiler.py``. The tree is built from
lark's parse tree bottom-up without recursion.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lark import Tree
from lark.exceptions import UnexpectedInput
from lark.lexer import Token as LarkToken

from prefect_batch.core.autoscale.errors import formula_error, too_long_error
from prefect_batch.core.autoscale.grammar import lark_parser, syntax_error
from prefect_batch.core.autoscale.nodes import (
    Assignment,
    Binary,
    Call,
    CallStatement,
    Conditional,
    Expression,
    Formula,
    Member,
    MethodCall,
    Name,
    Number,
    Statement,
    String,
    Unary,
    Vector,
)

__all__ = ["MAX_DEPTH", "MAX_FORMULA_LENGTH", "MAX_STATEMENTS", "parse_formula"]

MAX_FORMULA_LENGTH = 8192
"""Azure's limit, in characters ("8 KB")."""

MAX_STATEMENTS = 100
"""Azure's limit on statements in one formula."""

MAX_DEPTH = 200
"""Deepest expression nesting accepted (``1+1+...`` with 200 terms is 199 deep)."""


def parse_formula(text: str) -> Formula:
    """Parse ``text`` into a syntax tree, checking Azure's size limits.

    Raises:
        BatchInvalidRequestError: ``AutoScaleFormulaTooLong`` over 8,192 characters or 100
            statements; ``AutoScalingFormulaSyntaxError`` for anything that does not parse,
            with ``Line``, ``Column`` and ``Message`` in its values.
    """
    if not isinstance(text, str):
        raise formula_error(1, 1, "the formula must be a string")
    if len(text) > MAX_FORMULA_LENGTH:
        raise too_long_error(
            f"the formula has {len(text)} characters; at most {MAX_FORMULA_LENGTH} are allowed",
            {"Length": len(text), "MaxLength": MAX_FORMULA_LENGTH},
        )
    try:
        tree = lark_parser.parse(text)
    except UnexpectedInput as exc:
        raise syntax_error(exc, text) from None
    statements = _build(tree)
    if not statements:
        raise formula_error(1, 1, "the formula has no statements")
    if len(statements) > MAX_STATEMENTS:
        extra = statements[MAX_STATEMENTS]
        raise too_long_error(
            f"Line {extra.line}, Col {extra.column}: the formula has {len(statements)} "
            f"statements; at most {MAX_STATEMENTS} are allowed",
            {"Statements": len(statements), "MaxStatements": MAX_STATEMENTS},
        )
    return Formula(statements=statements, source=text)


# --- parse tree -> nodes -------------------------------------------------------------------------


def _pos(token: LarkToken) -> dict[str, int]:
    return {"line": token.line or 1, "column": token.column or 1}


def _name(token: LarkToken) -> Name:
    text = str(token)
    dollar = text.startswith("$")
    return Name(name=text[1:] if dollar else text, dollar=dollar, **_pos(token))


def _args(value: tuple[Expression, ...] | None) -> tuple[Expression, ...]:
    return () if value is None else value


def _start(tree: Tree[Any], kids: list[Any]) -> tuple[Statement, ...]:
    statements: list[Statement] = []
    separated = True
    for kid in kids:
        if isinstance(kid, LarkToken):  # a ';'
            separated = True
            continue
        if not separated:
            previous = statements[-1]
            if kid.line <= previous.end_line:
                raise formula_error(
                    kid.line, kid.column, "expected ';' between statements on the same line"
                )
        statements.append(kid)
        separated = False
    return tuple(statements)


def _assignment(tree: Tree[Any], kids: list[Any]) -> Assignment:
    target, _, value = kids
    meta = tree.meta
    return Assignment(
        target=_name(target),
        value=value,
        end_line=meta.end_line,
        end_column=meta.end_column,
        **_pos(target),
    )


def _call_statement(tree: Tree[Any], kids: list[Any]) -> CallStatement:
    (call,) = kids
    meta = tree.meta
    return CallStatement(
        call=call,
        end_line=meta.end_line,
        end_column=meta.end_column,
        line=call.line,
        column=call.column,
    )


def _conditional(tree: Tree[Any], kids: list[Any]) -> Conditional:
    condition, mark, if_true, if_false = kids
    return Conditional(condition=condition, if_true=if_true, if_false=if_false, **_pos(mark))


def _binary(tree: Tree[Any], kids: list[Any]) -> Binary:
    left, op, right = kids
    return Binary(op=str(op), left=left, right=right, **_pos(op))


def _unary(tree: Tree[Any], kids: list[Any]) -> Unary:
    op, operand = kids
    return Unary(op=str(op), operand=operand, **_pos(op))


def _member(tree: Tree[Any], kids: list[Any]) -> Member:
    target, name = kids
    return Member(target=target, member=str(name), **_pos(name))


def _method_call(tree: Tree[Any], kids: list[Any]) -> MethodCall:
    target, name, args = kids
    return MethodCall(target=target, method=str(name), args=_args(args), **_pos(name))


def _number(tree: Tree[Any], kids: list[Any]) -> Number:
    (token,) = kids
    return Number(value=float(str(token)), **_pos(token))


def _string(tree: Tree[Any], kids: list[Any]) -> String:
    (token,) = kids
    return String(value=str(token)[1:-1], **_pos(token))


def _name_rule(tree: Tree[Any], kids: list[Any]) -> Name:
    (token,) = kids
    return _name(token)


def _call(tree: Tree[Any], kids: list[Any]) -> Call:
    name, args = kids
    return Call(function=str(name), args=_args(args), **_pos(name))


def _vector(tree: Tree[Any], kids: list[Any]) -> Vector:
    bracket, args = kids
    return Vector(items=_args(args), **_pos(bracket))


def _arg_list(tree: Tree[Any], kids: list[Any]) -> tuple[Expression, ...]:
    return tuple(kids)


_BUILDERS: dict[str, Callable[[Tree[Any], list[Any]], Any]] = {
    "start": _start,
    "assignment": _assignment,
    "call_statement": _call_statement,
    "conditional": _conditional,
    "binary": _binary,
    "unary": _unary,
    "member": _member,
    "method_call": _method_call,
    "number": _number,
    "string": _string,
    "name": _name_rule,
    "call": _call,
    "vector": _vector,
    "args": _arg_list,
}

# Rules whose node adds a level of nesting (argument lists and statements do not).
_NESTING = frozenset({"conditional", "binary", "unary", "member", "method_call", "call", "vector"})


def _build(root: Tree[Any]) -> tuple[Statement, ...]:
    """Post-order walk with an explicit stack: deep trees cannot overflow Python's."""
    values: list[Any] = []
    depths: list[int] = []
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        item, children_done = stack.pop()
        if not isinstance(item, Tree):  # a token, or None for an absent optional part
            values.append(item)
            depths.append(0)
            continue
        if not children_done:
            stack.append((item, True))
            stack.extend((child, False) for child in reversed(item.children))
            continue
        first = len(values) - len(item.children)  # the children's values end the list
        kids = values[first:]
        depth = max(depths[first:], default=0)
        del values[first:]
        del depths[first:]
        node = _BUILDERS[str(item.data)](item, kids)
        if item.data in _NESTING:
            depth += 1
            if depth > MAX_DEPTH:
                raise formula_error(
                    node.line,
                    node.column,
                    f"expression nested too deeply (more than {MAX_DEPTH} levels)",
                )
        values.append(node)
        depths.append(depth)
    (statements,) = values
    result: tuple[Statement, ...] = statements
    return result
