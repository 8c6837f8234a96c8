"""Task dependencies: integer ids, dependsOn validation, resolution and status."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from prefect_batch.core.dependencies import (
    DependencyStatus,
    ResolvedDependencies,
    dependency_status,
    integer_task_id,
    resolve_parents,
    validate_depends_on,
)
from prefect_batch.core.ids import id_key
from prefect_batch.exceptions import BatchInvalidRequestError


@pytest.mark.parametrize(
    ("task_id", "expected"),
    [
        ("4", 4),
        ("04", 4),
        ("004", 4),
        ("0", 0),
        ("000", 0),
        ("123456789012", 123456789012),
        ("-4", None),
        ("+4", None),
        ("4a", None),
        ("a4", None),
        ("", None),
        (" 4", None),
        ("٤", None),  # an Arabic-Indic digit is no task number
        ("5flamingoes", None),
    ],
)
def test_integer_task_id(task_id: str, expected: int | None) -> None:
    assert integer_task_id(task_id) == expected


# --- validation ----------------------------------------------------------------------------------

ACCEPTED: list[tuple[dict[str, Any] | None, bool]] = [
    (None, False),
    ({}, False),
    ({"taskIds": [], "taskIdRanges": []}, False),
    ({"taskIds": ["a", "b"]}, True),
    ({"taskIdRanges": [{"start": 0, "end": 0}, {"start": 1, "end": 100}]}, True),
    ({"taskIds": ["x" * 64] * 1000}, True),  # exactly 64,000 characters
]


@pytest.mark.parametrize(("depends_on", "uses"), ACCEPTED)
def test_validate_accepts(depends_on: dict[str, Any] | None, uses: bool) -> None:
    validate_depends_on(depends_on, job_uses_task_dependencies=uses, task_id="child")


REJECTED = [
    ({"taskIds": ["a"]}, False, "child", "TaskDependenciesNotSpecifiedOnJob"),
    (
        {"taskIdRanges": [{"start": 1, "end": 2}]},
        False,
        "child",
        "TaskDependenciesNotSpecifiedOnJob",
    ),
    ({"taskIds": ["x" * 64] * 1000 + ["y"]}, True, "child", "TaskDependencyListTooLong"),
    ({"taskIdRanges": [{"start": 5, "end": 4}]}, True, "child", "InvalidPropertyValue"),
    ({"taskIdRanges": [{"start": -1, "end": 4}]}, True, "child", "InvalidPropertyValue"),
    ({"taskIdRanges": [{"start": 1}]}, True, "child", "InvalidPropertyValue"),
    ({"taskIdRanges": [{"start": "1", "end": 2}]}, True, "child", "InvalidPropertyValue"),
    ({"taskIds": ["bad id"]}, True, "child", "InvalidPropertyValue"),
    ({"taskIds": ["Child"]}, True, "child", "InvalidPropertyValue"),  # itself, in another case
    ({"taskIdRanges": [{"start": 1, "end": 9}]}, True, "007", "InvalidPropertyValue"),  # itself
    ({"taskIds": "a"}, True, "child", "InvalidPropertyValue"),
]


@pytest.mark.parametrize(("depends_on", "uses", "task_id", "code"), REJECTED)
def test_validate_rejects(depends_on: dict[str, Any], uses: bool, task_id: str, code: str) -> None:
    with pytest.raises(BatchInvalidRequestError) as info:
        validate_depends_on(depends_on, job_uses_task_dependencies=uses, task_id=task_id)
    assert info.value.code == code
    assert info.value.status_code == 400


def test_self_dependency_names_the_task() -> None:
    with pytest.raises(BatchInvalidRequestError, match="depends on itself") as info:
        validate_depends_on({"taskIds": ["a", "me"]}, job_uses_task_dependencies=True, task_id="me")
    assert info.value.values["PropertyName"] == "dependsOn.taskIds[1]"


# --- resolution ----------------------------------------------------------------------------------

TASKS = {"a": 1, "B": 2, "4": 3, "04": 4, "7": 5, "10": 6, "x9": 7}
EXISTING = {id_key(t): k for t, k in TASKS.items()}
INTEGER_IDS: dict[int, list[int]] = {}
for _tid, _key in TASKS.items():
    if (_n := integer_task_id(_tid)) is not None:
        INTEGER_IDS.setdefault(_n, []).append(_key)


def lookup(start: int, end: int) -> Mapping[int, Sequence[int]]:
    return {n: keys for n, keys in INTEGER_IDS.items() if start <= n <= end}


RESOLVE_CASES = [
    # (dependsOn, parent keys, missing, requirements)
    (None, set(), (), ()),
    ({"taskIds": ["a", "b"]}, {1, 2}, (), ({1}, {2})),  # ids match case-insensitively
    ({"taskIds": ["a", "nope", "Z"]}, {1}, ("nope", "Z"), ({1},)),
    ({"taskIdRanges": [{"start": 5, "end": 10}]}, {5, 6}, (), ({5}, {6})),
    ({"taskIdRanges": [{"start": 0, "end": 5}]}, {3, 4}, (), ({3, 4},)),  # 4 and 04: one group
    ({"taskIdRanges": [{"start": 11, "end": 99}]}, set(), ("11-99",), ()),
    (
        {"taskIds": ["04"], "taskIdRanges": [{"start": 4, "end": 4}]},
        {3, 4},
        (),
        ({4},),  # "04" is required by name and satisfies number 4 too
    ),
    (
        {"taskIds": ["a"], "taskIdRanges": [{"start": 0, "end": 2**40}, {"start": 8, "end": 9}]},
        {1, 3, 4, 5, 6},
        ("8-9",),
        ({1}, {3, 4}, {5}, {6}),
    ),
]


@pytest.mark.parametrize("integer_ids", [INTEGER_IDS, lookup], ids=["mapping", "callable"])
@pytest.mark.parametrize(("depends_on", "parents", "missing", "requirements"), RESOLVE_CASES)
def test_resolve_parents(
    depends_on: dict[str, Any] | None,
    parents: set[int],
    missing: tuple[str, ...],
    requirements: tuple[set[int], ...],
    integer_ids: Any,
) -> None:
    resolved = resolve_parents(depends_on, existing=EXISTING, integer_ids=integer_ids)
    assert resolved.parent_keys == parents
    assert resolved.missing == missing
    assert [set(g) for g in resolved.requirements] == [set(g) for g in requirements]


def test_resolve_does_not_walk_a_huge_range() -> None:
    # 2**62 numbers would never finish if walked one by one; the mapping is walked instead.
    depends_on = {"taskIdRanges": [{"start": 0, "end": 2**62}]}
    resolved = resolve_parents(depends_on, existing=EXISTING, integer_ids=INTEGER_IDS)
    assert resolved.parent_keys == {3, 4, 5, 6}


def test_resolved_by_hand_requires_every_parent() -> None:
    resolved = ResolvedDependencies(frozenset({2, 1}), ())
    assert resolved.requirements == (frozenset({1}), frozenset({2}))


STATUS_CASES = [
    # (requirements, satisfied, blocked, status)
    ((), set(), set(), DependencyStatus.SATISFIED),
    (({1}, {2}), {1}, set(), DependencyStatus.WAITING),
    (({1}, {2}), {1, 2}, set(), DependencyStatus.SATISFIED),
    (({1}, {2}), {1}, {2}, DependencyStatus.BLOCKED),
    (({3, 4},), {4}, set(), DependencyStatus.SATISFIED),  # one of the group suffices
    (({3, 4},), set(), {3}, DependencyStatus.WAITING),  # 04 may still satisfy
    (({3, 4},), set(), {3, 4}, DependencyStatus.BLOCKED),
    (({3, 4},), {4}, {3}, DependencyStatus.SATISFIED),
]


@pytest.mark.parametrize(("requirements", "satisfied", "blocked", "status"), STATUS_CASES)
def test_dependency_status(
    requirements: tuple[set[int], ...],
    satisfied: set[int],
    blocked: set[int],
    status: DependencyStatus,
) -> None:
    groups = tuple(frozenset(g) for g in requirements)
    parents = frozenset().union(*groups) if groups else frozenset()
    resolved = ResolvedDependencies(parents, (), groups)
    assert dependency_status(resolved, satisfied=satisfied, blocked=blocked) is status
