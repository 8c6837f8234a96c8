"""Lexer and parser: tokens, the tree's shape and positions, limits, and errors that say where."""

from __future__ import annotations

import dataclasses

import pytest

from prefect_batch.core.autoscale import (
    FORMULA_TOO_LONG,
    MAX_FORMULA_LENGTH,
    MAX_STATEMENTS,
    SYNTAX_ERROR,
    compile_formula,
    parse_formula,
    tokenize,
)
from prefect_batch.core.autoscale.nodes import (
    Assignment,
    Binary,
    Call,
    CallStatement,
    Conditional,
    Member,
    MethodCall,
    Name,
    Number,
    String,
    Unary,
    Vector,
)
from prefect_batch.core.autoscale.parser import MAX_DEPTH
from prefect_batch.exceptions import BatchInvalidRequestError

# --- lexer ---------------------------------------------------------------------------------------


def test_tokens_with_kinds_and_positions() -> None:
    tokens = tokenize('$x = a <= 1.5e2 != !b // note\n  && time("2016") /* c */ ;')
    assert [(t.kind, t.text) for t in tokens] == [
        ("IDENT", "$x"),
        ("ASSIGN", "="),
        ("IDENT", "a"),
        ("LE", "<="),
        ("NUMBER", "1.5e2"),
        ("NE", "!="),
        ("BANG", "!"),
        ("IDENT", "b"),
        ("ANDAND", "&&"),
        ("IDENT", "time"),
        ("LPAR", "("),
        ("STRING", '"2016"'),
        ("RPAR", ")"),
        ("SEMI", ";"),
    ]
    assert (tokens[0].line, tokens[0].column) == (1, 1)
    assert (tokens[8].line, tokens[8].column) == (2, 3)


@pytest.mark.parametrize("number", ["0", "12", "0.7", "5.", ".5", "1e3", "2.5E-3", "1e+20"])
def test_number_forms(number: str) -> None:
    assert [t.kind for t in tokenize(number)] == ["NUMBER"]


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("a = 1 # 2", 1, 7, "unexpected character '#'"),
        ("a = 1\n\n  b = @", 3, 7, "unexpected character '@'"),
        ('a = "open', 1, 5, "unterminated string"),
        ('a = "two\nlines"', 1, 5, "unterminated string"),
        ("a = 1 /* never closed", 1, 7, "unterminated comment"),
        ("a = 1 % 2", 1, 7, "'%'"),
        ("a = é", 1, 5, "unexpected character"),
    ],
)
def test_lexer_errors_name_the_position(text: str, line: int, column: int, fragment: str) -> None:
    for action in (tokenize, parse_formula):
        with pytest.raises(BatchInvalidRequestError) as info:
            action(text)
        error = info.value
        assert error.code == SYNTAX_ERROR
        assert error.status_code == 400
        assert error.values["Line"] == str(line)
        assert error.values["Column"] == str(column)
        assert fragment in error.values["Message"]
        assert error.values["Message"].startswith(f"Line {line}, Col {column}: ")


# --- parser: shape and positions -----------------------------------------------------------------


def test_precedence_and_positions() -> None:
    formula = parse_formula("x = 1 + 2 * -y.hour")
    (statement,) = formula.statements
    assert isinstance(statement, Assignment)
    assert statement.target == Name(line=1, column=1, name="x", dollar=False)
    plus = statement.value
    assert isinstance(plus, Binary) and plus.op == "+" and (plus.line, plus.column) == (1, 7)
    assert plus.left == Number(line=1, column=5, value=1.0)
    times = plus.right
    assert isinstance(times, Binary) and times.op == "*"
    negate = times.right
    assert isinstance(negate, Unary) and negate.op == "-"
    member = negate.operand
    assert isinstance(member, Member) and member.member == "hour"
    assert (member.line, member.column) == (1, 16)  # the member's name


def test_every_construct() -> None:
    formula = parse_formula(
        '$a = c ? [1, 2] : $M.GetSample(1, 2);\nstop()\nb = time("x") || !d && e == f'
    )
    first, second, third = formula.statements
    assert isinstance(first, Assignment)
    assert first.target.dollar and first.target.key == "a"
    cond = first.value
    assert isinstance(cond, Conditional) and (cond.line, cond.column) == (1, 8)
    assert isinstance(cond.if_true, Vector) and len(cond.if_true.items) == 2
    method = cond.if_false
    assert isinstance(method, MethodCall) and method.method == "GetSample"
    assert (method.line, method.column) == (1, 22) and len(method.args) == 2
    assert isinstance(second, CallStatement) and second.call.function == "stop"
    assert (second.line, second.end_line) == (2, 2)
    assert isinstance(third, Assignment)
    either = third.value
    assert isinstance(either, Binary) and either.op == "||"  # && binds tighter
    assert isinstance(either.left, Call) and either.left.args == (
        String(line=3, column=10, value="x"),
    )
    both = either.right
    assert isinstance(both, Binary) and both.op == "&&"
    assert isinstance(both.left, Unary) and both.left.op == "!"


def test_ternary_is_right_associative_and_binary_left() -> None:
    (statement,) = parse_formula("x = a ? b : c ? d : e - f - g").statements
    assert isinstance(statement, Assignment)
    outer = statement.value
    assert isinstance(outer, Conditional)
    inner = outer.if_false
    assert isinstance(inner, Conditional)
    minus = inner.if_false
    assert isinstance(minus, Binary) and isinstance(minus.left, Binary)  # (e - f) - g


def test_nodes_are_frozen() -> None:
    formula = parse_formula("x = 1")
    with pytest.raises(dataclasses.FrozenInstanceError):
        formula.statements[0].line = 3  # type: ignore[misc]


def test_statement_end_positions_span_lines() -> None:
    formula = parse_formula("a =\n  1 +\n  2\nb = 3")
    first, second = formula.statements
    assert (first.line, first.end_line) == (1, 3)
    assert second.line == 4


# --- parser errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "column", "fragment"),
    [
        ("a = ", 1, 5, "unexpected end of formula"),
        ("a = 1 +", 1, 8, "unexpected end of formula"),
        ("a == 1", 1, 3, "unexpected '=='; expected '(' or '='"),
        ("= 1", 1, 1, "unexpected '='"),
        ("a = 1 2", 1, 7, "unexpected '2'"),
        ("a = 1;\nb = (2 + 3;", 2, 11, "unexpected ';'"),
        ("a = 1 b = 2", 1, 7, "expected ';' between statements on the same line"),
        ("a = 1 +\n 2 b = 3", 2, 4, "expected ';'"),
        ("a = f(1,)", 1, 9, "unexpected ')'"),
        ("a = $x.", 1, 8, "unexpected end of formula; expected a name"),
        ("a = 1 ? 2", 1, 10, "expected ':'"),
        ("1 = a", 1, 1, "unexpected '1'"),
        ("a = [1, 2", 1, 10, "expected"),
        ("", 1, 1, "no statements"),
        ("  ;; // empty\n", 1, 1, "no statements"),
    ],
)
def test_syntax_errors_name_line_and_column(
    text: str, line: int, column: int, fragment: str
) -> None:
    with pytest.raises(BatchInvalidRequestError) as info:
        parse_formula(text)
    error = info.value
    assert error.code == SYNTAX_ERROR
    assert (error.values["Line"], error.values["Column"]) == (str(line), str(column)), error
    assert fragment in error.values["Message"]
    assert f"line {line}, column {column}" in error.message
    body = error.to_body()
    assert body["code"] == SYNTAX_ERROR
    assert {"key": "Line", "value": str(line)} in body["values"]


def test_not_a_string() -> None:
    with pytest.raises(BatchInvalidRequestError):
        parse_formula(42)  # type: ignore[arg-type]


# --- limits --------------------------------------------------------------------------------------


def test_length_limit_is_8192_characters() -> None:
    body = "$TargetDedicatedNodes = 1; //"
    ok = body + "x" * (MAX_FORMULA_LENGTH - len(body))
    assert len(parse_formula(ok).source) == MAX_FORMULA_LENGTH
    with pytest.raises(BatchInvalidRequestError) as info:
        parse_formula(ok + "x")
    assert info.value.code == FORMULA_TOO_LONG
    assert info.value.values["Length"] == str(MAX_FORMULA_LENGTH + 1)


def test_statement_limit_is_100() -> None:
    assert len(parse_formula("a = 1;" * MAX_STATEMENTS).statements) == MAX_STATEMENTS
    with pytest.raises(BatchInvalidRequestError) as info:
        parse_formula("a = 1;\n" * (MAX_STATEMENTS + 1))
    assert info.value.code == FORMULA_TOO_LONG
    assert info.value.values["Statements"] == str(MAX_STATEMENTS + 1)
    assert info.value.values["Message"].startswith("Line 101, Col 1: ")


def test_nesting_limit() -> None:
    assert parse_formula("a = " + "1+" * MAX_DEPTH + "1")  # 200 operators deep: fine
    with pytest.raises(BatchInvalidRequestError) as info:
        parse_formula("a = " + "1+" * (MAX_DEPTH + 1) + "1")
    assert "nested too deeply" in info.value.values["Message"]
    # Parentheses do not nest the tree: thousands are fine.
    assert compile_formula("a = " + "(" * 3000 + "1" + ")" * 3000)
