"""What happens when a task attempt ends: retry, or complete with which result and actions.

:func:`decide` applies Azure Batch's rules to one ended attempt:

* ``exited`` with code 0 succeeds. A non-zero code is an application failure
  (``usererror``/``FailureExitCode``) and is the only kind of failure that is retried, while
  ``maxTaskRetryCount`` allows (-1: forever, 0: never).
* ``timed_out`` (the task's ``maxWallClockTime``) and ``terminated`` (a user or the job ended it)
  complete the task as failed with exit code ``0xC000013A`` and ``TaskEnded``; never retried.
* ``start_failed`` (program missing or not executable), ``preprocessing_error`` (e.g. a resource
  file could not be downloaded) and ``file_upload_error`` fail the task with the error the node
  reported; never retried.

Once no retry is left, the task's ``exitConditions`` choose the job action and the dependency
action: an exact ``exitCodes`` entry, else the first ``exitCodeRanges`` range holding the code,
else ``preProcessingError`` / ``fileUploadError`` for those errors, else ``default`` (never for
exit code 0: non-default behaviour on success needs 0 listed explicitly); a field an
entry leaves out takes Azure's default (success: ``none``/``satisfy``; failure:
``terminate``/``block``). The job action counts only when the job's ``onTaskFailure`` is
``performexitoptionsjobaction``.

:func:`validate_exit_conditions` is the check made when a task is added.

This module only decides. It does not change the task or the job, stop processes, run a job
action or release dependent tasks; the service does that with the returned decision.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, NoReturn, TypeGuard, TypeVar

from prefect_batch.core.states import (
    DependencyAction,
    ErrorCategory,
    JobAction,
    OnTaskFailure,
    TaskExecutionResult,
)
from prefect_batch.exceptions import BatchInvalidRequestError, invalid_property

__all__ = [
    "WALL_CLOCK_EXIT_CODE",
    "AttemptKind",
    "AttemptOutcome",
    "CompletionDecision",
    "decide",
    "select_exit_options",
    "validate_exit_conditions",
]

WALL_CLOCK_EXIT_CODE = 0xC000013A
"""Exit code (3221225786, Windows' STATUS_CONTROL_C_EXIT) of a task the service ended."""

_E = TypeVar("_E", bound=Enum)

FAILURE_EXIT_CODE_MESSAGE = "The task exited with an exit code representing a failure"
WALL_CLOCK_MESSAGE = "Task Was Ended by the Service: it exceeded its max wall clock time"
TERMINATED_MESSAGE = "Task Was Ended by User Request"


class AttemptKind(str, Enum):
    """How a task attempt ended, as the node agent or the service saw it."""

    EXITED = "exited"
    """The process ran and exited with an exit code."""
    TIMED_OUT = "timed_out"
    """The service ended the process: it ran past the task's ``maxWallClockTime``."""
    TERMINATED = "terminated"
    """The process was ended on request (terminate task, terminate or disable job)."""
    PREPROCESSING_ERROR = "preprocessing_error"
    """The command never ran: preparing the task failed (e.g. a resource file download)."""
    FILE_UPLOAD_ERROR = "file_upload_error"
    """The command ran but its output files could not be uploaded."""
    START_FAILED = "start_failed"
    """The program could not be started (not found, not executable)."""


@dataclass(frozen=True)
class AttemptOutcome:
    """How one attempt of a task ended.

    Attributes:
        kind: An :class:`AttemptKind` value (a plain string such as ``"exited"`` is accepted and
            normalised).
        exit_code: The process's exit code. Required for ``exited``; ignored for ``timed_out``
            and ``terminated`` (the service reports :data:`WALL_CLOCK_EXIT_CODE`); whatever the
            node saw otherwise, often ``None``.
        error_code: Azure error code for the error kinds, e.g. ``CommandProgramNotFound``,
            ``BlobNotFound``.
        error_message: Human-readable message for the error kinds.
        error_values: Details of the error; they become ``failureInfo.details``.
        error_category: ``usererror`` (default) or ``servererror``, for the error kinds.
    """

    kind: str
    exit_code: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_values: Mapping[str, str] = field(default_factory=dict)
    error_category: str = ErrorCategory.USER_ERROR.value

    def __post_init__(self) -> None:
        kind = AttemptKind(self.kind)  # ValueError on an unknown kind: a caller bug
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "error_category", ErrorCategory(self.error_category).value)
        if kind is AttemptKind.EXITED and self.exit_code is None:
            raise ValueError("an 'exited' attempt needs an exit code")


@dataclass(frozen=True)
class CompletionDecision:
    """What to do with a task whose attempt ended.

    Attributes:
        retry: Queue the task again (``retryCount`` + 1). ``result`` is then ``None``,
            ``job_action`` is ``none`` and ``dependency_action`` is ``block`` (dependents keep
            waiting); neither action is to be carried out.
        result: ``success`` or ``failure`` when the task completes; ``None`` when it is retried.
        exit_code: The exit code to record in ``executionInfo.exitCode`` (``None``: none).
        failure_info: Azure's ``failureInfo`` in wire form
            (``{"category", "code", "message", "details"?: [{"name", "value"}]}``), or ``None``
            on success. Filled for a failed attempt that is retried, too (the attempt's error).
        job_action: The job action to carry out (already gated by the job's ``onTaskFailure``).
        dependency_action: Whether the task releases its dependents.
    """

    retry: bool
    result: TaskExecutionResult | None
    exit_code: int | None
    failure_info: dict[str, Any] | None
    job_action: JobAction
    dependency_action: DependencyAction


def decide(
    outcome: AttemptOutcome,
    *,
    retry_count: int,
    max_task_retry_count: int,
    exit_conditions: Mapping[str, Any] | None,
    task_failure_mode: str,
) -> CompletionDecision:
    """Decide what follows an ended attempt.

    Args:
        outcome: How the attempt ended.
        retry_count: Retries already used (``executionInfo.retryCount``).
        max_task_retry_count: The task's ``constraints.maxTaskRetryCount`` (-1 unlimited, 0 none).
        exit_conditions: The task's ``exitConditions`` in wire form, or ``None``.
        task_failure_mode: The job's ``onTaskFailure`` (``noaction`` or
            ``performexitoptionsjobaction``).

    Returns:
        The decision. Exit options are applied only to the final attempt.

    Raises:
        ValueError: A negative ``retry_count``, a ``max_task_retry_count`` below -1 or an unknown
            ``task_failure_mode`` (caller bugs: requests are validated before they get here).
    """
    if retry_count < 0:
        raise ValueError(f"retry_count must be >= 0, not {retry_count}")
    if max_task_retry_count < -1:
        raise ValueError(f"max_task_retry_count must be >= -1, not {max_task_retry_count}")
    mode = OnTaskFailure(task_failure_mode)
    kind = AttemptKind(outcome.kind)

    exit_code: int | None
    failure_info: dict[str, Any] | None
    if kind is AttemptKind.EXITED:
        exit_code = outcome.exit_code
        failure_info = (
            None
            if exit_code == 0
            else _failure_info(
                ErrorCategory.USER_ERROR.value,
                "FailureExitCode",
                FAILURE_EXIT_CODE_MESSAGE,
                outcome.error_values,
            )
        )
    elif kind is AttemptKind.TIMED_OUT:
        exit_code = WALL_CLOCK_EXIT_CODE
        failure_info = _failure_info(
            ErrorCategory.SERVER_ERROR.value, "TaskEnded", WALL_CLOCK_MESSAGE, outcome.error_values
        )
    elif kind is AttemptKind.TERMINATED:
        exit_code = WALL_CLOCK_EXIT_CODE
        failure_info = _failure_info(
            ErrorCategory.USER_ERROR.value, "TaskEnded", TERMINATED_MESSAGE, outcome.error_values
        )
    else:  # start_failed, preprocessing_error, file_upload_error: the node's own error
        exit_code = outcome.exit_code
        failure_info = _failure_info(
            outcome.error_category,
            outcome.error_code or _DEFAULT_ERROR_CODES[kind],
            outcome.error_message or _DEFAULT_ERROR_MESSAGES[kind],
            outcome.error_values,
        )

    succeeded = failure_info is None
    # Only application failures (a non-zero exit) are retried; errors before or after the
    # command ran, and ends the service or the user imposed, are final.
    retryable = kind is AttemptKind.EXITED and not succeeded
    if retryable and (max_task_retry_count == -1 or retry_count < max_task_retry_count):
        return CompletionDecision(
            retry=True,
            result=None,
            exit_code=exit_code,
            failure_info=failure_info,
            job_action=JobAction.NONE,
            dependency_action=DependencyAction.BLOCK,
        )

    options = select_exit_options(exit_conditions, kind, exit_code)
    job_action, dependency_action = _apply_defaults(options, succeeded)
    if mode is not OnTaskFailure.PERFORM_EXIT_OPTIONS_JOB_ACTION:
        job_action = JobAction.NONE
    return CompletionDecision(
        retry=False,
        result=TaskExecutionResult.SUCCESS if succeeded else TaskExecutionResult.FAILURE,
        exit_code=exit_code,
        failure_info=failure_info,
        job_action=job_action,
        dependency_action=dependency_action,
    )


def select_exit_options(
    exit_conditions: Mapping[str, Any] | None, kind: AttemptKind | str, exit_code: int | None
) -> Mapping[str, Any] | None:
    """Find the ``exitOptions`` that apply to an ended attempt.

    Order: for an attempt with an exit code (``exited``, ``timed_out``, ``terminated``), the
    ``exitCodes`` entry for that code, then the first ``exitCodeRanges`` range holding it
    (inclusive), then ``default``. For a ``preprocessing_error``, ``preProcessingError`` then
    ``default``. For a ``file_upload_error``, an exit code listed in ``exitCodes`` or
    ``exitCodeRanges`` takes precedence (the command ran and exited first), then
    ``fileUploadError``, then ``default``. A ``start_failed`` attempt uses ``default``.

    ``default`` is not used for exit code 0: Azure applies it to non-zero codes and errors only,
    so non-default behaviour on success needs 0 listed in ``exitCodes`` or ``exitCodeRanges``.

    Args:
        exit_conditions: ``exitConditions`` in wire form, or ``None``.
        kind: How the attempt ended.
        exit_code: The exit code to match (the recorded one).

    Returns:
        The ``exitOptions`` mapping, or ``None`` when nothing applies.
    """
    if not exit_conditions:
        return None
    kind = AttemptKind(kind)
    if kind in (AttemptKind.EXITED, AttemptKind.TIMED_OUT, AttemptKind.TERMINATED):
        if exit_code is not None:
            found = _match_exit_code(exit_conditions, exit_code)
            if found is not None:
                return found
        if exit_code == 0:
            # Azure: "default" covers non-zero codes; 0 keeps the success defaults unless listed.
            return None
    elif kind is AttemptKind.PREPROCESSING_ERROR:
        if exit_conditions.get("preProcessingError") is not None:
            return _as_options(exit_conditions["preProcessingError"])
    elif kind is AttemptKind.FILE_UPLOAD_ERROR:
        if exit_code is not None:
            found = _match_exit_code(exit_conditions, exit_code)
            if found is not None:
                return found
        if exit_conditions.get("fileUploadError") is not None:
            return _as_options(exit_conditions["fileUploadError"])
    return _as_options(exit_conditions.get("default"))


def validate_exit_conditions(
    exit_conditions: Mapping[str, Any] | None, task_failure_mode: str
) -> None:
    """Check a task's ``exitConditions`` as Azure does when the task is added.

    Args:
        exit_conditions: ``exitConditions`` in wire form, or ``None``.
        task_failure_mode: The job's ``onTaskFailure``.

    Raises:
        BatchInvalidRequestError: ``InvalidPropertyValue`` naming ``exitConditions`` (the exact
            path is in the reason) when the structure is malformed, a range has ``start > end``,
            an action is not a known value, or a ``jobAction`` other than ``none`` is given while
            the job's ``onTaskFailure`` is ``noaction`` (Azure refuses it: the action could never
            happen).
    """
    try:
        mode = OnTaskFailure(task_failure_mode)
    except ValueError:
        raise invalid_property(
            "onTaskFailure",
            task_failure_mode,
            "must be one of: " + ", ".join(m.value for m in OnTaskFailure),
        ) from None
    if exit_conditions is None:
        return
    if not isinstance(exit_conditions, Mapping):
        _fail("exitConditions", exit_conditions, "must be an object")

    options_at: list[tuple[str, Any]] = []
    codes = exit_conditions.get("exitCodes") or []
    if not isinstance(codes, list):
        _fail("exitConditions.exitCodes", codes, "must be a list")
    for i, entry in enumerate(codes):
        where = f"exitConditions.exitCodes[{i}]"
        if not isinstance(entry, Mapping):
            _fail(where, entry, "must be an object")
        if not _is_int(entry.get("code")):
            _fail(f"{where}.code", entry.get("code"), "must be an integer")
        options_at.append((f"{where}.exitOptions", entry.get("exitOptions")))
    ranges = exit_conditions.get("exitCodeRanges") or []
    if not isinstance(ranges, list):
        _fail("exitConditions.exitCodeRanges", ranges, "must be a list")
    for i, entry in enumerate(ranges):
        where = f"exitConditions.exitCodeRanges[{i}]"
        if not isinstance(entry, Mapping):
            _fail(where, entry, "must be an object")
        start, end = entry.get("start"), entry.get("end")
        if not _is_int(start) or not _is_int(end):
            _fail(where, f"{start}-{end}", "start and end must be integers")
        if start > end:
            _fail(where, f"{start}-{end}", f"start ({start}) must not be greater than end ({end})")
        options_at.append((f"{where}.exitOptions", entry.get("exitOptions")))
    for key in ("preProcessingError", "fileUploadError", "default"):
        if exit_conditions.get(key) is not None:
            options_at.append((f"exitConditions.{key}", exit_conditions[key]))

    for where, options in options_at:
        if options is None:
            continue
        if not isinstance(options, Mapping):
            _fail(where, options, "must be an object")
        job_action = options.get("jobAction")
        if job_action is not None:
            parsed = _parse(JobAction, job_action)
            if parsed is None:
                _fail(
                    f"{where}.jobAction",
                    job_action,
                    "must be one of: " + ", ".join(a.value for a in JobAction),
                )
            if parsed is not JobAction.NONE and mode is OnTaskFailure.NO_ACTION:
                _fail(
                    f"{where}.jobAction",
                    job_action,
                    f"a job action ({parsed.value}) needs the job's onTaskFailure to be "
                    f"{OnTaskFailure.PERFORM_EXIT_OPTIONS_JOB_ACTION.value}, but it is "
                    f"{mode.value}",
                )
        dependency_action = options.get("dependencyAction")
        if dependency_action is not None and _parse(DependencyAction, dependency_action) is None:
            _fail(
                f"{where}.dependencyAction",
                dependency_action,
                "must be one of: " + ", ".join(a.value for a in DependencyAction),
            )


_DEFAULT_ERROR_CODES: Mapping[AttemptKind, str] = {
    AttemptKind.START_FAILED: "CommandProgramNotFound",
    AttemptKind.PREPROCESSING_ERROR: "PreProcessingError",
    AttemptKind.FILE_UPLOAD_ERROR: "FileUploadError",
}
_DEFAULT_ERROR_MESSAGES: Mapping[AttemptKind, str] = {
    AttemptKind.START_FAILED: "The task's program could not be started",
    AttemptKind.PREPROCESSING_ERROR: "The task could not be prepared on the node",
    AttemptKind.FILE_UPLOAD_ERROR: "The task's output files could not be uploaded",
}


def _failure_info(
    category: str, code: str, message: str, values: Mapping[str, str]
) -> dict[str, Any]:
    """Build ``failureInfo`` in wire form; ``details`` only when there are any, as Azure does."""
    info: dict[str, Any] = {"category": category, "code": code, "message": message}
    if values:
        info["details"] = [{"name": k, "value": v} for k, v in values.items()]
    return info


def _match_exit_code(exit_conditions: Mapping[str, Any], code: int) -> Mapping[str, Any] | None:
    """Return the options of the exact ``exitCodes`` entry, else of the first range holding it."""
    for entry in exit_conditions.get("exitCodes") or ():
        if entry.get("code") == code:
            return _as_options(entry.get("exitOptions")) or {}
    for entry in exit_conditions.get("exitCodeRanges") or ():
        if entry.get("start") <= code <= entry.get("end"):
            return _as_options(entry.get("exitOptions")) or {}
    return None


def _as_options(value: Any) -> Mapping[str, Any] | None:
    return value if isinstance(value, Mapping) else None


def _apply_defaults(
    options: Mapping[str, Any] | None, succeeded: bool
) -> tuple[JobAction, DependencyAction]:
    """Fill what ``options`` leaves out with Azure's defaults for the result."""
    job_action = JobAction.NONE if succeeded else JobAction.TERMINATE
    dependency_action = DependencyAction.SATISFY if succeeded else DependencyAction.BLOCK
    if options:
        job_action = _parse(JobAction, options.get("jobAction")) or job_action
        dependency_action = (
            _parse(DependencyAction, options.get("dependencyAction")) or dependency_action
        )
    return job_action, dependency_action


def _parse(enum: type[_E], value: Any) -> _E | None:
    """Parse an enum wire value case-insensitively (the SDKs send either case); None if unknown."""
    if isinstance(value, Enum):
        value = value.value
    if not isinstance(value, str):
        return None
    try:
        return enum(value.lower())
    except ValueError:
        return None


def _is_int(value: object) -> TypeGuard[int]:
    """An ``int`` that is not a ``bool`` (JSON true is no exit code)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _fail(where: str, value: Any, reason: str) -> NoReturn:
    """Raise ``InvalidPropertyValue`` naming ``exitConditions``; the reason holds the path."""
    error: BatchInvalidRequestError = invalid_property(
        "exitConditions", value, f"{where}: {reason}"
    )
    raise error
