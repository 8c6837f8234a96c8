"""Completion decisions: results, failure info, retries and exit options (Azure's rules)."""

from __future__ import annotations

from typing import Any

import pytest

from prefect_batch.core.completion import (
    WALL_CLOCK_EXIT_CODE,
    AttemptKind,
    AttemptOutcome,
    CompletionDecision,
    decide,
    select_exit_options,
    validate_exit_conditions,
)
from prefect_batch.core.states import DependencyAction, JobAction, TaskExecutionResult
from prefect_batch.exceptions import BatchInvalidRequestError

PERFORM = "performexitoptionsjobaction"
NOACTION = "noaction"


def run(
    outcome: AttemptOutcome,
    *,
    retry_count: int = 0,
    max_retries: int = 0,
    exit_conditions: dict[str, Any] | None = None,
    mode: str = PERFORM,
) -> CompletionDecision:
    return decide(
        outcome,
        retry_count=retry_count,
        max_task_retry_count=max_retries,
        exit_conditions=exit_conditions,
        task_failure_mode=mode,
    )


def opts(job: str | None = None, dep: str | None = None) -> dict[str, str]:
    out = {}
    if job is not None:
        out["jobAction"] = job
    if dep is not None:
        out["dependencyAction"] = dep
    return out


def test_wall_clock_exit_code_value() -> None:
    assert WALL_CLOCK_EXIT_CODE == 3221225786 == 0xC000013A


# --- results and failure info ------------------------------------------------------------------

RESULT_CASES = [
    # (outcome, result, exit_code, failure_info)
    pytest.param(
        AttemptOutcome("exited", exit_code=0),
        TaskExecutionResult.SUCCESS,
        0,
        None,
        id="exit-0-success",
    ),
    pytest.param(
        AttemptOutcome("exited", exit_code=3),
        TaskExecutionResult.FAILURE,
        3,
        {
            "category": "usererror",
            "code": "FailureExitCode",
            "message": "The task exited with an exit code representing a failure",
        },
        id="exit-nonzero-failure",
    ),
    pytest.param(
        AttemptOutcome("exited", exit_code=-9),
        TaskExecutionResult.FAILURE,
        -9,
        {
            "category": "usererror",
            "code": "FailureExitCode",
            "message": "The task exited with an exit code representing a failure",
        },
        id="killed-by-signal",
    ),
    pytest.param(
        AttemptOutcome("timed_out", exit_code=137),
        TaskExecutionResult.FAILURE,
        3221225786,
        {
            "category": "servererror",
            "code": "TaskEnded",
            "message": "Task Was Ended by the Service: it exceeded its max wall clock time",
        },
        id="wall-clock",
    ),
    pytest.param(
        AttemptOutcome("terminated"),
        TaskExecutionResult.FAILURE,
        3221225786,
        {
            "category": "usererror",
            "code": "TaskEnded",
            "message": "Task Was Ended by User Request",
        },
        id="terminated",
    ),
    pytest.param(
        AttemptOutcome(
            "start_failed",
            error_code="CommandProgramNotFound",
            error_message="The specified command program is not found",
            error_values={"Program": "nosuchprog"},
        ),
        TaskExecutionResult.FAILURE,
        None,
        {
            "category": "usererror",
            "code": "CommandProgramNotFound",
            "message": "The specified command program is not found",
            "details": [{"name": "Program", "value": "nosuchprog"}],
        },
        id="start-failed",
    ),
    pytest.param(
        AttemptOutcome(
            "preprocessing_error",
            error_code="BlobNotFound",
            error_message="The specified blob does not exist.",
            error_values={"FilePath": "input.txt"},
        ),
        TaskExecutionResult.FAILURE,
        None,
        {
            "category": "usererror",
            "code": "BlobNotFound",
            "message": "The specified blob does not exist.",
            "details": [{"name": "FilePath", "value": "input.txt"}],
        },
        id="preprocessing-user",
    ),
    pytest.param(
        AttemptOutcome(
            "preprocessing_error",
            error_code="BlobDownloadTimedOut",
            error_message="timed out",
            error_category="servererror",
        ),
        TaskExecutionResult.FAILURE,
        None,
        {"category": "servererror", "code": "BlobDownloadTimedOut", "message": "timed out"},
        id="preprocessing-server",
    ),
    pytest.param(
        AttemptOutcome(
            "file_upload_error",
            exit_code=0,
            error_code="FileUploadError",
            error_message="upload failed",
        ),
        TaskExecutionResult.FAILURE,
        0,
        {"category": "usererror", "code": "FileUploadError", "message": "upload failed"},
        id="file-upload",
    ),
]


@pytest.mark.parametrize(("outcome", "result", "exit_code", "failure_info"), RESULT_CASES)
def test_result_exit_code_and_failure_info(
    outcome: AttemptOutcome,
    result: TaskExecutionResult,
    exit_code: int | None,
    failure_info: dict[str, Any] | None,
) -> None:
    decision = run(outcome)
    assert decision.retry is False
    assert decision.result is result
    assert decision.exit_code == exit_code
    assert decision.failure_info == failure_info


def test_success_defaults_to_no_job_action_and_satisfy() -> None:
    decision = run(AttemptOutcome("exited", exit_code=0))
    assert (decision.job_action, decision.dependency_action) == (
        JobAction.NONE,
        DependencyAction.SATISFY,
    )


@pytest.mark.parametrize(("outcome", "result", "exit_code", "failure_info"), RESULT_CASES[1:])
def test_failure_defaults_to_terminate_and_block(
    outcome: AttemptOutcome, result: Any, exit_code: Any, failure_info: Any
) -> None:
    decision = run(outcome)
    assert (decision.job_action, decision.dependency_action) == (
        JobAction.TERMINATE,
        DependencyAction.BLOCK,
    )


def test_kind_is_normalised_and_checked() -> None:
    assert AttemptOutcome("exited", exit_code=0).kind is AttemptKind.EXITED
    with pytest.raises(ValueError):
        AttemptOutcome("exploded")
    with pytest.raises(ValueError):
        AttemptOutcome("exited")  # an exit needs its code
    with pytest.raises(ValueError):
        AttemptOutcome("start_failed", error_category="blame")


# --- retries -------------------------------------------------------------------------------------

RETRY_CASES = [
    # (kind, exit code, retry_count, max_task_retry_count, retried)
    ("exited", 1, 0, 0, False),  # 0: never retried
    ("exited", 1, 0, 2, True),
    ("exited", 1, 1, 2, True),
    ("exited", 1, 2, 2, False),  # the third failure is final
    ("exited", 1, 0, -1, True),  # -1: unlimited
    ("exited", 1, 10_000, -1, True),
    ("exited", 0, 0, 2, False),  # success is never retried
    ("timed_out", None, 0, 2, False),
    ("timed_out", None, 0, -1, False),
    ("terminated", None, 0, -1, False),
    ("start_failed", None, 0, -1, False),
    ("preprocessing_error", None, 0, -1, False),
    ("file_upload_error", 1, 0, -1, False),
]


@pytest.mark.parametrize(("kind", "code", "used", "limit", "retried"), RETRY_CASES)
def test_retry_limits(kind: str, code: int | None, used: int, limit: int, retried: bool) -> None:
    decision = run(AttemptOutcome(kind, exit_code=code), retry_count=used, max_retries=limit)
    assert decision.retry is retried
    if retried:
        assert decision.result is None
        assert decision.job_action is JobAction.NONE
        assert decision.failure_info is not None
        assert decision.failure_info["code"] == "FailureExitCode"
    else:
        assert decision.result is not None


def test_exit_options_apply_only_to_the_final_attempt() -> None:
    ec = {"exitCodes": [{"code": 1, "exitOptions": opts("disable", "satisfy")}]}
    retrying = run(AttemptOutcome("exited", exit_code=1), max_retries=1, exit_conditions=ec)
    assert retrying.retry and retrying.job_action is JobAction.NONE
    final = run(
        AttemptOutcome("exited", exit_code=1), retry_count=1, max_retries=1, exit_conditions=ec
    )
    assert not final.retry
    assert (final.job_action, final.dependency_action) == (
        JobAction.DISABLE,
        DependencyAction.SATISFY,
    )


@pytest.mark.parametrize(
    ("retry_count", "limit"),
    [(-1, 0), (0, -2)],
)
def test_bad_retry_arguments(retry_count: int, limit: int) -> None:
    with pytest.raises(ValueError):
        run(AttemptOutcome("exited", exit_code=1), retry_count=retry_count, max_retries=limit)


# --- exit options lookup -------------------------------------------------------------------------

EC: dict[str, Any] = {
    "exitCodes": [
        {"code": 5, "exitOptions": opts("none", "satisfy")},
        {"code": 0, "exitOptions": opts("terminate")},
        {"code": 3221225786, "exitOptions": opts("disable")},
    ],
    "exitCodeRanges": [
        {"start": 1, "end": 10, "exitOptions": opts("disable", "block")},
        {"start": 8, "end": 20, "exitOptions": opts("none", "satisfy")},
        {"start": -5, "end": -1, "exitOptions": {}},
    ],
    "preProcessingError": opts("none", "satisfy"),
    "fileUploadError": opts("disable"),
    "default": opts("none", "satisfy"),
}

LOOKUP_CASES = [
    # (outcome, exit_conditions, job action, dependency action)
    pytest.param(
        AttemptOutcome("exited", exit_code=5), EC, "none", "satisfy", id="exact-beats-range"
    ),
    pytest.param(AttemptOutcome("exited", exit_code=1), EC, "disable", "block", id="range-start"),
    pytest.param(AttemptOutcome("exited", exit_code=10), EC, "disable", "block", id="range-end"),
    pytest.param(AttemptOutcome("exited", exit_code=9), EC, "disable", "block", id="first-range"),
    pytest.param(AttemptOutcome("exited", exit_code=15), EC, "none", "satisfy", id="second-range"),
    pytest.param(
        AttemptOutcome("exited", exit_code=-3), EC, "terminate", "block", id="empty-options"
    ),
    pytest.param(AttemptOutcome("exited", exit_code=99), EC, "none", "satisfy", id="default"),
    pytest.param(
        AttemptOutcome("exited", exit_code=0), EC, "terminate", "satisfy", id="zero-listed"
    ),
    pytest.param(
        AttemptOutcome("exited", exit_code=0),
        {"default": opts("terminate", "block")},
        "none",
        "satisfy",
        id="default-not-for-zero",
    ),
    pytest.param(AttemptOutcome("timed_out"), EC, "disable", "block", id="wall-clock-code"),
    pytest.param(
        AttemptOutcome("terminated"),
        {"default": opts("disable", "satisfy")},
        "disable",
        "satisfy",
        id="terminated-default",
    ),
    pytest.param(
        AttemptOutcome("preprocessing_error", error_code="BlobNotFound"),
        EC,
        "none",
        "satisfy",
        id="preprocessing",
    ),
    pytest.param(
        AttemptOutcome("preprocessing_error", error_code="BlobNotFound"),
        {"default": opts("disable")},
        "disable",
        "block",
        id="preprocessing-default",
    ),
    pytest.param(
        AttemptOutcome("file_upload_error", exit_code=5, error_code="X"),
        EC,
        "none",
        "satisfy",
        id="upload-exit-code-wins",
    ),
    pytest.param(
        AttemptOutcome("file_upload_error", exit_code=0, error_code="X"),
        {"fileUploadError": opts("disable")},
        "disable",
        "block",
        id="upload",
    ),
    pytest.param(
        AttemptOutcome("file_upload_error", exit_code=0, error_code="X"),
        {"default": opts("none", "satisfy")},
        "none",
        "satisfy",
        id="upload-default",
    ),
    pytest.param(
        AttemptOutcome("start_failed", error_code="CommandProgramNotFound"),
        {"default": opts("disable")},
        "disable",
        "block",
        id="start-failed-default",
    ),
    pytest.param(
        AttemptOutcome("exited", exit_code=4),
        {"exitCodes": [{"code": 4, "exitOptions": {"jobAction": "DISABLE"}}]},
        "disable",
        "block",
        id="case-insensitive",
    ),
]


@pytest.mark.parametrize(("outcome", "ec", "job", "dep"), LOOKUP_CASES)
def test_exit_options_lookup(
    outcome: AttemptOutcome, ec: dict[str, Any], job: str, dep: str
) -> None:
    decision = run(outcome, exit_conditions=ec)
    assert (decision.job_action.value, decision.dependency_action.value) == (job, dep)


def test_result_is_not_changed_by_exit_options() -> None:
    ec = {"exitCodes": [{"code": 2, "exitOptions": opts("none", "satisfy")}]}
    decision = run(AttemptOutcome("exited", exit_code=2), exit_conditions=ec)
    assert decision.result is TaskExecutionResult.FAILURE
    assert decision.dependency_action is DependencyAction.SATISFY


def test_select_exit_options_without_conditions() -> None:
    assert select_exit_options(None, "exited", 1) is None
    assert select_exit_options({}, AttemptKind.EXITED, 1) is None


# --- job action gating ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "ec", "code", "job"),
    [
        (PERFORM, None, 1, JobAction.TERMINATE),
        (NOACTION, None, 1, JobAction.NONE),
        (PERFORM, {"default": opts("disable")}, 1, JobAction.DISABLE),
        (NOACTION, {"default": opts("disable")}, 1, JobAction.NONE),
        (
            PERFORM,
            {"exitCodes": [{"code": 0, "exitOptions": opts("terminate")}]},
            0,
            JobAction.TERMINATE,
        ),
        (
            NOACTION,
            {"exitCodes": [{"code": 0, "exitOptions": opts("terminate")}]},
            0,
            JobAction.NONE,
        ),
    ],
)
def test_job_action_gated_by_task_failure_mode(
    mode: str, ec: dict[str, Any] | None, code: int, job: JobAction
) -> None:
    assert (
        run(AttemptOutcome("exited", exit_code=code), exit_conditions=ec, mode=mode).job_action
        is job
    )


def test_dependency_action_is_not_gated() -> None:
    ec = {"default": opts(dep="satisfy")}
    decision = run(AttemptOutcome("exited", exit_code=1), exit_conditions=ec, mode=NOACTION)
    assert decision.dependency_action is DependencyAction.SATISFY


def test_unknown_mode_is_a_caller_bug() -> None:
    with pytest.raises(ValueError):
        run(AttemptOutcome("exited", exit_code=0), mode="sometimes")


# --- validation ----------------------------------------------------------------------------------

VALID = [
    (None, NOACTION),
    ({}, NOACTION),
    ({"default": opts("none", "block")}, NOACTION),
    ({"exitCodes": [{"code": 1, "exitOptions": opts(dep="satisfy")}]}, NOACTION),
    (EC, PERFORM),
    ({"exitCodeRanges": [{"start": 3, "end": 3, "exitOptions": opts("terminate")}]}, PERFORM),
    ({"exitCodes": [{"code": 1, "exitOptions": opts("Terminate")}]}, PERFORM),
]


@pytest.mark.parametrize(("ec", "mode"), VALID)
def test_valid_exit_conditions(ec: dict[str, Any] | None, mode: str) -> None:
    validate_exit_conditions(ec, mode)


INVALID = [
    ({"exitCodeRanges": [{"start": 5, "end": 4, "exitOptions": {}}]}, PERFORM, "greater than"),
    ({"exitCodeRanges": [{"start": 1}]}, PERFORM, "integers"),
    ({"exitCodes": [{"code": "1", "exitOptions": {}}]}, PERFORM, "integer"),
    ({"exitCodes": [{"code": True, "exitOptions": {}}]}, PERFORM, "integer"),
    ({"exitCodes": {"code": 1}}, PERFORM, "list"),
    ({"default": opts("explode")}, PERFORM, "one of"),
    ({"default": opts(dep="maybe")}, PERFORM, "one of"),
    ({"default": opts("terminate")}, NOACTION, "onTaskFailure"),
    ({"preProcessingError": opts("disable")}, NOACTION, "preProcessingError.jobAction"),
    (
        {"exitCodes": [{"code": 1, "exitOptions": opts("disable")}]},
        NOACTION,
        r"exitCodes\[0\]\.exitOptions\.jobAction",
    ),
    (
        {"exitCodeRanges": [{"start": 1, "end": 2, "exitOptions": opts("terminate")}]},
        NOACTION,
        "performexitoptionsjobaction",
    ),
]


@pytest.mark.parametrize(("ec", "mode", "reason"), INVALID)
def test_invalid_exit_conditions(ec: dict[str, Any], mode: str, reason: str) -> None:
    with pytest.raises(BatchInvalidRequestError, match=reason) as info:
        validate_exit_conditions(ec, mode)
    assert info.value.code == "InvalidPropertyValue"
    assert info.value.values["PropertyName"] == "exitConditions"
    assert info.value.status_code == 400


def test_invalid_task_failure_mode() -> None:
    with pytest.raises(BatchInvalidRequestError) as info:
        validate_exit_conditions(None, "whenever")
    assert info.value.values["PropertyName"] == "onTaskFailure"
