"""Errors of the formula language: Azure's codes, and how a position is put into them.

Two kinds, as in Azure Batch:

* A formula that cannot be accepted (bad syntax, unknown name, wrong types, too long) is a
  *request* error: :func:`formula_error` and :func:`too_long_error` build the
  :class:`~prefect_batch.exceptions.BatchInvalidRequestError` that ``parse_formula`` raises, with
  ``Line``, ``Column`` and ``Message`` in its ``values``.
* A formula that is valid but fails while it runs (too few samples, an empty vector, an index
  out of range...) is an *evaluation* error: the run records it (``AutoScaleRun.error``) and the
  pool keeps its size. Inside the evaluator it travels as :class:`EvaluationFailure`.

Messages follow the shape Azure prints: ``Line 9, Col 43: Insufficient data from data set:
$PendingTasks wanted 70%, received 0%``.

This module does no parsing or evaluating; it only names and builds errors.
"""

from __future__ import annotations

from prefect_batch.exceptions import BatchInvalidRequestError

__all__ = [
    "EVALUATION_ERROR",
    "EVALUATION_ERROR_MESSAGE",
    "FORMULA_TOO_LONG",
    "INSUFFICIENT_SAMPLE_DATA",
    "INSUFFICIENT_SAMPLE_DATA_MESSAGE",
    "SYNTAX_ERROR",
    "EvaluationFailure",
    "formula_error",
    "located",
    "too_long_error",
]

SYNTAX_ERROR = "AutoScalingFormulaSyntaxError"
"""Azure's code (HTTP 400) for a formula that does not parse or does not type-check."""

FORMULA_TOO_LONG = "AutoScaleFormulaTooLong"
"""Azure's code (HTTP 400) for a formula over 8,192 characters or 100 statements."""

INSUFFICIENT_SAMPLE_DATA = "InsufficientSampleData"
"""Azure's evaluation error: a ``GetSample`` found fewer samples than the percent it asked for."""

INSUFFICIENT_SAMPLE_DATA_MESSAGE = "Autoscale evaluation failed due to insufficient sample data"
"""Azure's message for :data:`INSUFFICIENT_SAMPLE_DATA`."""

EVALUATION_ERROR = "AutoScalingFormulaEvaluationError"
"""Our code for every other evaluation failure (Azure documents no code for these)."""

EVALUATION_ERROR_MESSAGE = "Autoscale evaluation failed"
"""The message that goes with :data:`EVALUATION_ERROR`."""


def located(line: int, column: int, detail: str) -> str:
    """``Line 3, Col 7: detail`` -- Azure's way of naming a position."""
    return f"Line {line}, Col {column}: {detail}"


def formula_error(line: int, column: int, detail: str) -> BatchInvalidRequestError:
    """The error for a formula that does not parse or check, naming the position (1-based)."""
    return BatchInvalidRequestError(
        SYNTAX_ERROR,
        f"The autoscale formula has an error at line {line}, column {column}: {detail}",
        {"Line": line, "Column": column, "Message": located(line, column, detail)},
    )


def too_long_error(detail: str, values: dict[str, int]) -> BatchInvalidRequestError:
    """The error for a formula over Azure's size limits."""
    return BatchInvalidRequestError(
        FORMULA_TOO_LONG,
        f"The autoscale formula exceeds the length limit: {detail}",
        {**values, "Message": detail},
    )


class EvaluationFailure(Exception):
    """An evaluation stopped by an error; the evaluator turns it into ``AutoScaleRun.error``.

    Raised by operators, functions and sample methods, which do not know where they are in the
    formula; the compiled node that called them adds its position with :meth:`at` on the way out.

    Attributes:
        code: The Azure-style error code.
        detail: What went wrong, without the position.
        line: 1-based line of the expression that failed, once known.
        column: 1-based column, once known.
    """

    def __init__(self, detail: str, code: str = EVALUATION_ERROR) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.line: int | None = None
        self.column: int | None = None

    def at(self, line: int, column: int) -> EvaluationFailure:
        """Set the position unless an inner expression already did; return ``self``."""
        if self.line is None:
            self.line = line
            self.column = column
        return self

    @property
    def message(self) -> str:
        """The run error's ``message``: Azure's fixed sentence for the code."""
        if self.code == INSUFFICIENT_SAMPLE_DATA:
            return INSUFFICIENT_SAMPLE_DATA_MESSAGE
        return EVALUATION_ERROR_MESSAGE

    @property
    def located_detail(self) -> str:
        """The detail prefixed with ``Line L, Col C:`` when the position is known."""
        if self.line is None or self.column is None:
            return self.detail
        return located(self.line, self.column, self.detail)
