"""The formula grammar (a LALR(1) grammar for ``lark``) and its lexer.

Tokens: names ``$?[A-Za-z_][A-Za-z0-9_]*``; numbers ``12``, ``0.7``, ``5.``, ``.5``, ``1e-3``;
strings in double quotes, without escapes or line breaks; the operators and punctuation below.
Blanks, line breaks, ``// line`` and ``/* block */`` comments separate tokens.

Precedence, loosest first (C's, which the docs imply but do not state): ``?:`` (right
associative), ``||``, ``&&``, ``== !=``, ``< <= > >=``, ``+ -``, ``* /``, unary ``- !``, then
member access and method calls (``$x.GetSample(1)``, ``t.hour``). Binary operators associate to
the left.

A formula is a sequence of statements -- assignments ``name = expression`` and bare function
calls (``stop()``) -- separated by ``;``. The grammar also lets two statements follow each other
without one; the parser accepts that only across a line break (see ``parser.py``).

This module only defines the grammar and tokenizes; ``parser.py`` turns parse trees into
``nodes``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lark import Lark
from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from prefect_batch.core.autoscale.errors import formula_error
from prefect_batch.exceptions import BatchInvalidRequestError

__all__ = ["GRAMMAR", "TOKEN_NAMES", "Token", "lark_parser", "syntax_error", "tokenize"]

GRAMMAR = r"""
start: (_statement | SEMI)*
_statement: assignment | call_statement
assignment: IDENT ASSIGN expr
call_statement: call

?expr: or_expr
     | or_expr QMARK expr _COLON expr              -> conditional
?or_expr: and_expr | or_expr OROR and_expr          -> binary
?and_expr: eq_expr | and_expr ANDAND eq_expr        -> binary
?eq_expr: rel_expr | eq_expr (EQ | NE) rel_expr     -> binary
?rel_expr: add_expr | rel_expr (LT | LE | GT | GE) add_expr -> binary
?add_expr: mul_expr | add_expr (PLUS | MINUS) mul_expr -> binary
?mul_expr: unary | mul_expr (STAR | SLASH) unary    -> binary
?unary: postfix | (MINUS | BANG) unary              -> unary
?postfix: atom
        | postfix _DOT IDENT                        -> member
        | postfix _DOT IDENT _LPAR [args] _RPAR     -> method_call
?atom: NUMBER                                       -> number
     | STRING                                       -> string
     | IDENT                                        -> name
     | call
     | _LPAR expr _RPAR
     | LSQB [args] _RSQB                            -> vector
call: IDENT _LPAR [args] _RPAR
args: expr (_COMMA expr)*

IDENT: /\$?[A-Za-z_][A-Za-z0-9_]*/
NUMBER: /(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?/
STRING: /"[^"\n]*"/
SEMI: ";"
ASSIGN: "="
QMARK: "?"
_COLON: ":"
OROR: "||"
ANDAND: "&&"
EQ: "=="
NE: "!="
LT: "<"
LE: "<="
GT: ">"
GE: ">="
PLUS: "+"
MINUS: "-"
STAR: "*"
SLASH: "/"
BANG: "!"
_DOT: "."
_LPAR: "("
_RPAR: ")"
LSQB: "["
_RSQB: "]"
_COMMA: ","

%ignore /[ \t\r\n\f]+/
%ignore /\/\/[^\n]*/
%ignore /\/\*(.|\n)*?\*\//
"""

TOKEN_NAMES: dict[str, str] = {
    "IDENT": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "SEMI": "';'",
    "ASSIGN": "'='",
    "QMARK": "'?'",
    "_COLON": "':'",
    "COLON": "':'",
    "OROR": "'||'",
    "ANDAND": "'&&'",
    "EQ": "'=='",
    "NE": "'!='",
    "LT": "'<'",
    "LE": "'<='",
    "GT": "'>'",
    "GE": "'>='",
    "PLUS": "'+'",
    "MINUS": "'-'",
    "STAR": "'*'",
    "SLASH": "'/'",
    "BANG": "'!'",
    "_DOT": "'.'",
    "DOT": "'.'",
    "_LPAR": "'('",
    "LPAR": "'('",
    "_RPAR": "')'",
    "RPAR": "')'",
    "LSQB": "'['",
    "_RSQB": "']'",
    "RSQB": "']'",
    "_COMMA": "','",
    "COMMA": "','",
    "$END": "the end of the formula",
}
"""How error messages name each terminal."""

lark_parser = Lark(
    GRAMMAR,
    parser="lalr",
    lexer="basic",
    propagate_positions=True,
    maybe_placeholders=True,
)
"""The one parser instance (lark parsers are reusable and hold no per-parse state)."""


@dataclass(frozen=True, slots=True)
class Token:
    """A lexical token: its terminal name (``IDENT``, ``NUMBER``, ``LE``...), text, position."""

    kind: str
    text: str
    line: int
    column: int


def tokenize(text: str) -> list[Token]:
    """The tokens of ``text``, comments and blanks dropped.

    Raises:
        BatchInvalidRequestError: ``AutoScalingFormulaSyntaxError`` at a character that starts
            no token (or an unterminated string or comment).
    """
    try:
        tokens = [
            Token(tok.type.lstrip("_"), str(tok), tok.line or 0, tok.column or 0)
            for tok in lark_parser.lex(text)
        ]
    except UnexpectedInput as exc:
        raise syntax_error(exc, text) from None
    for slash, star in zip(tokens, tokens[1:], strict=False):
        # "/*" left as two tokens: had a "*/" followed, the comment rule would have taken it.
        adjacent = (star.line, star.column) == (slash.line, slash.column + 1)
        if slash.kind == "SLASH" and star.kind == "STAR" and adjacent:
            raise formula_error(slash.line, slash.column, "unterminated comment")
    return tokens


def _end_position(text: str) -> tuple[int, int]:
    """The line and column just after the last character of ``text``."""
    line = text.count("\n") + 1
    return line, len(text) - (text.rfind("\n") + 1) + 1


def _expected(names: set[str]) -> str:
    shown = sorted({TOKEN_NAMES.get(name, name) for name in names})
    if not shown:
        return ""
    if len(shown) > 6:
        return "; expected an operator, ';' or a line break" if "';'" in shown else ""
    if len(shown) == 1:
        return f"; expected {shown[0]}"
    return f"; expected {', '.join(shown[:-1])} or {shown[-1]}"


def syntax_error(exc: UnexpectedInput, text: str) -> BatchInvalidRequestError:
    """Our ``AutoScalingFormulaSyntaxError`` for a lark lexing or parsing error."""
    if isinstance(exc, UnexpectedCharacters):
        at = exc.pos_in_stream or 0
        char = text[at] if 0 <= at < len(text) else ""
        if char == '"':
            detail = "unterminated string (strings end on the same line)"
        else:
            detail = f"unexpected character {char!r}"
        return formula_error(exc.line, exc.column, detail)
    if isinstance(exc, UnexpectedToken):
        expected = _expected(set(exc.expected))
        start = exc.token.start_pos or 0
        if exc.token.type == "STAR" and start > 0 and text[start - 1] == "/":
            return formula_error(exc.line, exc.column - 1, "unterminated comment")
        if exc.token.type == "$END":
            line, column = _end_position(text)
            return formula_error(line, column, f"unexpected end of formula{expected}")
        return formula_error(exc.line, exc.column, f"unexpected '{exc.token}'{expected}")
    line, column = _end_position(text)  # UnexpectedEOF: not raised by LALR, kept for safety
    return formula_error(line, column, "unexpected end of formula")
