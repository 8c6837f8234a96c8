"""Ids: legal characters and length, case-insensitive keys, reserved job ids."""

from __future__ import annotations

import pytest

from prefect_batch.core.ids import (
    RESERVED_JOB_IDS,
    id_key,
    validate_id,
    validate_job_id,
)
from prefect_batch.exceptions import BatchInvalidRequestError


@pytest.mark.parametrize(
    "value",
    ["a", "A", "0", "-", "_", "job-1_A", "x" * 64, "MyPool", "task-000123"],
)
def test_valid_ids_are_returned_unchanged(value: str) -> None:
    assert validate_id(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("", "empty"),
        ("x" * 65, "at most 64"),
        ("has space", "only ASCII"),
        ("dot.ted", "only ASCII"),
        ("slash/y", "only ASCII"),
        ("ünïcode", "only ASCII"),
        ("٣", "only ASCII"),  # a non-ASCII digit
        ("trailing\n", "only ASCII"),
        ("tab\t", "only ASCII"),
    ],
)
def test_invalid_ids_are_rejected(value: str, reason: str) -> None:
    with pytest.raises(BatchInvalidRequestError, match=reason) as info:
        validate_id(value, "poolInfo.poolId")
    assert info.value.code == "InvalidPropertyValue"
    assert info.value.values["PropertyName"] == "poolInfo.poolId"
    assert info.value.status_code == 400


def test_non_string_id_is_rejected() -> None:
    with pytest.raises(BatchInvalidRequestError):
        validate_id(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [("MyJob", "myjob", True), ("MYJOB", "myJob", True), ("job-1", "job_1", False)],
)
def test_id_key_is_case_insensitive(a: str, b: str, same: bool) -> None:
    assert (id_key(a) == id_key(b)) is same


def test_reserved_job_ids_are_the_node_directories() -> None:
    assert RESERVED_JOB_IDS == {"shared", "startup", "fsmounts", "workitems", "applications"}


@pytest.mark.parametrize("value", ["shared", "SHARED", "Startup", "fsMounts", "WorkItems"])
def test_reserved_job_ids_are_rejected_in_any_case(value: str) -> None:
    with pytest.raises(BatchInvalidRequestError, match="reserved") as info:
        validate_job_id(value)
    assert info.value.values["PropertyName"] == "id"


@pytest.mark.parametrize("value", ["shared1", "my-startup", "Job_A"])
def test_other_job_ids_are_accepted(value: str) -> None:
    assert validate_job_id(value) == value


def test_job_ids_follow_the_id_rules_too() -> None:
    with pytest.raises(BatchInvalidRequestError, match="only ASCII"):
        validate_job_id("bad id")
