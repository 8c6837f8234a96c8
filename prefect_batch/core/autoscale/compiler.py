"""Check a parsed formula and turn it into Python closures that evaluate it.

Checking happens once, before any evaluation, and rejects with ``AutoScalingFormulaSyntaxError``
(naming the line and column) what Azure would reject when the formula is set:

* a name that is neither a constant, a service variable, nor a user variable assigned by an
  earlier statement;
* assigning a constant or a read-only service variable; a target that is not a double; a
  ``$NodeDeallocationOption`` literal that is not one of the four options;
* a bare sampled metric (``$ActiveTasks`` outside ``$ActiveTasks.GetSample(...)``), a method on
  anything else, an unknown method, function or timestamp member;
* operand or argument types outside the operator table (``operators.py``), the function
  signatures (``functions.py``) or the sample-method signatures (``runtime.py``);
* ``?:`` branches of different types (a ``stop()`` branch fits any type);
* ``time("...")`` with a literal that is not a date and time.

Because every statement is an assignment run in order, a variable's type at each point is
known, and a variable may change type when it is reassigned. Names are case-insensitive and
``x`` is ``$x``; results show a user variable as first assigned, with a ``$``.

Each node becomes a closure ``frame -> value``; errors met while running carry the position of
the node that failed. This module does not run them (``evaluator.py`` does).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect_batch.core.autoscale.errors import EvaluationFailure, formula_error
from prefect_batch.core.autoscale.functions import FUNCTIONS
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
from prefect_batch.core.autoscale.operators import BINARY, LOGICAL, UNARY
from prefect_batch.core.autoscale.parser import parse_formula
from prefect_batch.core.autoscale.runtime import METHODS, Frame
from prefect_batch.core.autoscale.values import (
    TIMESTAMP_MEMBERS,
    Type,
    Value,
    parse_time,
)
from prefect_batch.core.autoscale.variables import (
    CONSTANTS,
    DEALLOCATION_OPTIONS,
    ServiceVariable,
    VariableKind,
    service_variable,
)
from prefect_batch.exceptions import BatchInvalidRequestError

__all__ = ["CompiledFormula", "compile_formula"]

Code = Callable[[Frame], Any]
"""A compiled expression or statement."""


@dataclass(frozen=True)
class CompiledFormula:
    """A checked formula, ready to evaluate any number of times.

    Attributes:
        formula: The syntax tree it was compiled from (``formula.source`` is the text).
        statements: One closure per statement, in order.
        user_names: How results show each user variable, by lower-cased name (``$curTime``).
        metrics: The sampled service variables the formula reads samples of (canonical
            names): the only series an environment for it needs.
    """

    formula: Formula
    statements: tuple[Code, ...]
    user_names: dict[str, str]
    metrics: frozenset[str]

    @property
    def source(self) -> str:
        """The formula text."""
        return self.formula.source


def compile_formula(formula: str | Formula) -> CompiledFormula:
    """Parse (if given text) and check a formula, and compile it.

    Raises:
        BatchInvalidRequestError: ``AutoScaleFormulaTooLong`` or ``AutoScalingFormulaSyntaxError``
            (with ``Line``, ``Column`` and ``Message`` values).
    """
    if isinstance(formula, str):
        formula = parse_formula(formula)
    compiler = _Compiler()
    try:
        statements = tuple(compiler.statement(s) for s in formula.statements)
    except RecursionError:  # only a hand-built tree can be this deep; the parser caps nesting
        raise formula_error(1, 1, "expression nested too deeply") from None
    return CompiledFormula(formula, statements, compiler.user_names, frozenset(compiler.metrics))


def _error(node: Any, detail: str) -> BatchInvalidRequestError:
    return formula_error(node.line, node.column, detail)


def _types(types: tuple[Type, ...]) -> str:
    return "(" + ", ".join(str(t) for t in types) + ")"


class _Compiler:
    """Walks statements in order, tracking each user variable's current type."""

    def __init__(self) -> None:
        self.scope: dict[str, Type] = {}
        self.user_names: dict[str, str] = {}
        self.metrics: set[str] = set()

    # --- statements ------------------------------------------------------------------------------

    def statement(self, node: Statement) -> Code:
        if isinstance(node, CallStatement):
            _, code = self.expression(node.call)
            return code
        return self.assignment(node)

    def assignment(self, node: Assignment) -> Code:
        target = node.target
        key = target.key
        kind, value = self.expression(node.value)
        if key in CONSTANTS:
            raise _error(target, f"'{target.text}' is a constant and cannot be assigned")
        variable = service_variable(key)
        if variable is not None:
            return self.service_assignment(node, variable, kind, value)
        if kind is not Type.NEVER:
            self.scope[key] = kind
        self.user_names.setdefault(key, "$" + target.name)

        def assign(frame: Frame) -> None:
            frame.variables[key] = value(frame)

        return assign

    def service_assignment(
        self, node: Assignment, variable: ServiceVariable, kind: Type, value: Code
    ) -> Code:
        target, key = node.target, node.target.key
        if not variable.settable:
            raise _error(target, f"{variable.name} is read-only")
        if variable.kind is VariableKind.TARGET:
            if kind not in (Type.DOUBLE, Type.NEVER):
                raise _error(node.value, f"{variable.name} must be a double, not a {kind}")

            def set_target(frame: Frame) -> None:
                frame.targets[key] = value(frame)

            return set_target
        if kind not in (Type.STRING, Type.NEVER):
            raise _error(node.value, f"{variable.name} must be a string, not a {kind}")
        if isinstance(node.value, String) and node.value.value not in DEALLOCATION_OPTIONS:
            raise _error(node.value, _bad_option(node.value.value))
        line, column = node.value.line, node.value.column

        def set_option(frame: Frame) -> None:
            option = value(frame)
            if option not in DEALLOCATION_OPTIONS:
                raise EvaluationFailure(_bad_option(option)).at(line, column)
            frame.targets[key] = option

        return set_option

    # --- expressions -----------------------------------------------------------------------------

    def expression(self, node: Expression) -> tuple[Type, Code]:
        if isinstance(node, Number):
            number = node.value
            return Type.DOUBLE, lambda frame: number
        if isinstance(node, String):
            text = node.value
            return Type.STRING, lambda frame: text
        if isinstance(node, Name):
            return self.name(node)
        if isinstance(node, Binary):
            return self.binary(node)
        if isinstance(node, Unary):
            return self.unary(node)
        if isinstance(node, Conditional):
            return self.conditional(node)
        if isinstance(node, Call):
            return self.call(node)
        if isinstance(node, MethodCall):
            return self.method_call(node)
        if isinstance(node, Member):
            return self.member(node)
        return self.vector(node)

    def name(self, node: Name) -> tuple[Type, Code]:
        key = node.key
        if not node.dollar and key in CONSTANTS:
            kind, constant = CONSTANTS[key]
            return kind, lambda frame: constant
        variable = service_variable(key)
        if variable is not None:
            return self.service_read(node, variable)
        if key not in self.scope:
            hint = " (constants are written without '$')" if key in CONSTANTS else ""
            raise _error(node, f"unknown variable '{node.text}'{hint}")
        return self.scope[key], lambda frame: frame.variables[key]

    def service_read(self, node: Name, variable: ServiceVariable) -> tuple[Type, Code]:
        name = variable.name
        if variable.kind is VariableKind.METRIC:
            raise _error(
                node,
                f"{name} is a sampled metric: read it with a sample method, "
                f"e.g. {name}.GetSample(1)",
            )
        if variable.kind is VariableKind.DEALLOCATION:
            key = name[1:].lower()
            return Type.STRING, lambda frame: frame.targets.get(key, "requeue")
        if variable.kind is VariableKind.TARGET:
            full = name[1:].lower()
            alias = full.removesuffix("nodes")
            attribute = (
                "target_dedicated_nodes" if "dedicated" in full else "target_low_priority_nodes"
            )

            def read_target(frame: Frame) -> Value:
                return frame.target(full, alias, getattr(frame.environment, attribute))

            return Type.DOUBLE, read_target
        return Type.DOUBLE, lambda frame: frame.node_values[name]

    def binary(self, node: Binary) -> tuple[Type, Code]:
        left_type, left = self.expression(node.left)
        right_type, right = self.expression(node.right)
        line, column, op = node.line, node.column, node.op
        if op in LOGICAL:
            return self.logical(node, left_type, left, right_type, right)
        if Type.NEVER in (left_type, right_type):
            return Type.NEVER, lambda frame: (left(frame), right(frame))
        rule = BINARY.get((op, left_type, right_type))
        if rule is None:
            hint = ""
            if (op, left_type, right_type) == ("-", Type.TIMESTAMP, Type.INTERVAL):
                hint = "; add a negative interval instead: t + (-1 * TimeInterval_Hour)"
            raise _error(node, f"'{op}' cannot combine {left_type} and {right_type}{hint}")
        result, apply = rule

        def run(frame: Frame) -> Value:
            try:
                value: Value = apply(left(frame), right(frame))
            except EvaluationFailure as failure:
                raise failure.at(line, column) from None
            return value

        return result, run

    def logical(
        self, node: Binary, left_type: Type, left: Code, right_type: Type, right: Code
    ) -> tuple[Type, Code]:
        for side, kind in ((node.left, left_type), (node.right, right_type)):
            if kind not in (Type.DOUBLE, Type.NEVER):
                raise _error(side, f"'{node.op}' needs doubles, not a {kind}")
        if left_type is Type.NEVER:
            return Type.NEVER, left
        if node.op == "&&":
            return (
                Type.DOUBLE,
                lambda frame: 1.0 if left(frame) != 0.0 and right(frame) != 0.0 else 0.0,
            )
        return Type.DOUBLE, lambda frame: 1.0 if left(frame) != 0.0 or right(frame) != 0.0 else 0.0

    def unary(self, node: Unary) -> tuple[Type, Code]:
        kind, operand = self.expression(node.operand)
        if kind is Type.NEVER:
            return kind, operand
        rule = UNARY.get((node.op, kind))
        if rule is None:
            raise _error(node, f"unary '{node.op}' cannot apply to a {kind}")
        result, apply = rule
        return result, lambda frame: apply(operand(frame))

    def conditional(self, node: Conditional) -> tuple[Type, Code]:
        condition_type, condition = self.expression(node.condition)
        if condition_type not in (Type.DOUBLE, Type.NEVER):
            raise _error(node.condition, f"a condition must be a double, not a {condition_type}")
        true_type, if_true = self.expression(node.if_true)
        false_type, if_false = self.expression(node.if_false)
        if true_type is Type.NEVER:
            result = false_type
        elif false_type is Type.NEVER or true_type is false_type:
            result = true_type
        else:
            raise _error(
                node, f"the branches of '?:' have different types ({true_type} and {false_type})"
            )
        return result, lambda frame: if_true(frame) if condition(frame) != 0.0 else if_false(frame)

    def arguments(self, args: tuple[Expression, ...]) -> tuple[tuple[Type, ...], tuple[Code, ...]]:
        compiled = [self.expression(arg) for arg in args]
        return tuple(t for t, _ in compiled), tuple(c for _, c in compiled)

    def call(self, node: Call) -> tuple[Type, Code]:
        function = FUNCTIONS.get(node.function.lower())
        if function is None:
            raise _error(node, f"unknown function '{node.function}'")
        types, codes = self.arguments(node.args)
        if Type.NEVER in types:
            return Type.NEVER, lambda frame: tuple(code(frame) for code in codes)
        result = function.result(types)
        if result is None:
            raise _error(node, f"{function.signature} cannot take {_types(types)}")
        if function.name == "time" and node.args and isinstance(node.args[0], String):
            literal = node.args[0]
            if literal.value:
                try:
                    parse_time(literal.value)
                except EvaluationFailure as failure:
                    raise _error(literal, failure.detail) from None
        run, line, column = function.run, node.line, node.column

        def call(frame: Frame) -> Value:
            try:
                return run(frame, tuple(code(frame) for code in codes))
            except EvaluationFailure as failure:
                raise failure.at(line, column) from None

        return result, call

    def method_call(self, node: MethodCall) -> tuple[Type, Code]:
        target = node.target
        variable = service_variable(target.key) if isinstance(target, Name) else None
        if variable is None or not variable.sampled:
            shown = target.text if isinstance(target, Name) else "this expression"
            raise _error(
                node,
                f"'{node.method}' is a sample method; {shown} has none "
                f"(only sampled service variables such as $ActiveTasks do)",
            )
        entry = METHODS.get(node.method.lower())
        if entry is None:
            raise _error(node, f"unknown sample method '{node.method}'")
        _, (result_of, signature, run) = entry
        self.metrics.add(variable.name)
        types, codes = self.arguments(node.args)
        if Type.NEVER in types:
            return Type.NEVER, lambda frame: tuple(code(frame) for code in codes)
        result = result_of(types)
        if result is None:
            raise _error(node, f"{signature} cannot take {_types(types)}")
        metric, line, column = variable.name, node.line, node.column

        def call(frame: Frame) -> Value:
            try:
                value: Value = run(frame, metric, tuple(code(frame) for code in codes))
            except EvaluationFailure as failure:
                raise failure.at(line, column) from None
            return value

        return result, call

    def member(self, node: Member) -> tuple[Type, Code]:
        kind, target = self.expression(node.target)
        if kind is Type.NEVER:
            return kind, target
        if kind is not Type.TIMESTAMP:
            raise _error(node, f"'.{node.member}' needs a timestamp, not a {kind}")
        member = node.member.lower()
        if member not in TIMESTAMP_MEMBERS:
            raise _error(
                node,
                f"a timestamp has no member '{node.member}' "
                f"(it has {', '.join(sorted(TIMESTAMP_MEMBERS))})",
            )
        return Type.DOUBLE, lambda frame: target(frame).member(member)

    def vector(self, node: Vector) -> tuple[Type, Code]:
        types, codes = self.arguments(node.items)
        for item, kind in zip(node.items, types, strict=True):
            if kind is Type.NEVER:
                return Type.NEVER, lambda frame: tuple(code(frame) for code in codes)
            if kind is not Type.DOUBLE:
                raise _error(item, f"a vector holds doubles, not a {kind}")
        return Type.VECTOR, lambda frame: tuple(code(frame) for code in codes)


def _bad_option(value: object) -> str:
    options = ", ".join(sorted(DEALLOCATION_OPTIONS))
    return f"$NodeDeallocationOption must be one of {options}, not '{value}'"
