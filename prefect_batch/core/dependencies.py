"""Task dependencies: checking a task's ``dependsOn`` and resolving it to parent tasks.

A task of a job with ``usesTaskDependencies`` may name parents by id (``taskIds``) and by integer
ranges (``taskIdRanges``, inclusive). A range selects only tasks whose id is an integer; leading
zeros are not significant, so ``4``, ``04`` and ``004`` are all task 4 and the first of them to
complete satisfies the dependency (:attr:`ResolvedDependencies.requirements`).

A dependent runs once every parent completed with dependency action ``satisfy``; a parent that
completed with ``block`` keeps it waiting for ever (Azure does not cancel dependents).
:func:`dependency_status` answers that from the parents' actions. For a group of equal integer
ids, one ``satisfy`` suffices and the group blocks only when all of its members blocked: Azure's
"the first to complete satisfies" without needing the order in which they completed.

This module does not read the store: the caller passes the job's existing tasks as mappings, and
raises for the ``missing`` parents :func:`resolve_parents` reports.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence, Set
from dataclasses import dataclass
from enum import Enum
from typing import Any, NoReturn, TypeGuard

from prefect_batch.core.ids import id_key, validate_id
from prefect_batch.exceptions import BatchInvalidRequestError, invalid_property

__all__ = [
    "MAX_TASK_ID_LIST_CHARS",
    "DependencyStatus",
    "IntegerIdLookup",
    "ResolvedDependencies",
    "dependency_status",
    "integer_task_id",
    "resolve_parents",
    "validate_depends_on",
]

MAX_TASK_ID_LIST_CHARS = 64_000
"""Azure's limit on the combined length of a task's ``dependsOn.taskIds``."""

IntegerIdLookup = Callable[[int, int], Mapping[int, Sequence[int]]]
"""``(start, end) -> {integer id: [task keys]}`` for the job's tasks with an integer id in range."""

_DIGITS = re.compile(r"[0-9]+")


class DependencyStatus(str, Enum):
    """Where a dependent task stands with its parents."""

    SATISFIED = "satisfied"
    """Every dependency is satisfied: the task may be scheduled."""
    WAITING = "waiting"
    """Some parent has not completed yet."""
    BLOCKED = "blocked"
    """Some dependency can never be satisfied: a parent completed with ``block``."""


@dataclass(frozen=True)
class ResolvedDependencies:
    """The parents a ``dependsOn`` names, as task keys.

    Attributes:
        parent_keys: Every parent task: those named in ``taskIds`` and every task a range
            selects. A parent's completion is when the dependent is looked at again.
        missing: ``taskIds`` entries with no such task, and ranges that select no task (as
            ``"start-end"``), in request order. The caller decides whether to refuse the task.
        requirements: What must hold for the dependent to run: each group needs one satisfied
            member. A ``taskIds`` parent is a group of one; the tasks a range selects for one
            integer (``4``, ``04``, ``004``) form one group. Left empty, every parent is its own
            group.
    """

    parent_keys: frozenset[int]
    missing: tuple[str, ...]
    requirements: tuple[frozenset[int], ...] = ()

    def __post_init__(self) -> None:
        if not self.requirements and self.parent_keys:
            singles = tuple(frozenset({key}) for key in sorted(self.parent_keys))
            object.__setattr__(self, "requirements", singles)


def integer_task_id(task_id: str) -> int | None:
    """Return the integer a task id stands for in ``taskIdRanges``, or ``None``.

    Args:
        task_id: A task id.

    Returns:
        The id's value when it is all ASCII digits (leading zeros ignored: ``"004"`` is 4);
        ``None`` otherwise (``"-4"``, ``"4a"``, ``""``).
    """
    if _DIGITS.fullmatch(task_id) is None:
        return None
    return int(task_id)


def validate_depends_on(
    depends_on: Mapping[str, Any] | None, *, job_uses_task_dependencies: bool, task_id: str
) -> None:
    """Check a task's ``dependsOn`` as Azure does when the task is added.

    An absent or empty ``dependsOn`` (no ids, no ranges) is always accepted.

    Args:
        depends_on: ``{"taskIds": [...], "taskIdRanges": [{"start", "end"}]}`` or ``None``.
        job_uses_task_dependencies: The job's ``usesTaskDependencies``.
        task_id: The id of the task being added.

    Raises:
        BatchInvalidRequestError: ``TaskDependenciesNotSpecifiedOnJob`` when the job does not use
            task dependencies; ``TaskDependencyListTooLong`` when the ids are longer than 64,000
            characters together; ``InvalidPropertyValue`` for a malformed id or range, a range
            with ``start > end`` or a negative bound, or a task that depends on itself.
    """
    if depends_on is None:
        return
    if not isinstance(depends_on, Mapping):
        _fail("dependsOn", depends_on, "must be an object")
    task_ids = depends_on.get("taskIds") or []
    ranges = depends_on.get("taskIdRanges") or []
    if not isinstance(task_ids, list):
        _fail("dependsOn.taskIds", task_ids, "must be a list of task ids")
    if not isinstance(ranges, list):
        _fail("dependsOn.taskIdRanges", ranges, "must be a list of ranges")
    if not task_ids and not ranges:
        return
    if not job_uses_task_dependencies:
        raise BatchInvalidRequestError(
            "TaskDependenciesNotSpecifiedOnJob",
            f"The task {task_id} has dependencies, but its job does not use task dependencies "
            "(set usesTaskDependencies when the job is created).",
            {"TaskId": task_id},
        )
    total = sum(len(t) if isinstance(t, str) else 0 for t in task_ids)
    if total > MAX_TASK_ID_LIST_CHARS:
        raise BatchInvalidRequestError(
            "TaskDependencyListTooLong",
            f"The task {task_id} depends on task ids {total} characters long together; "
            f"at most {MAX_TASK_ID_LIST_CHARS} are allowed. Use taskIdRanges for long lists.",
            {"TaskId": task_id, "Length": total, "MaxLength": MAX_TASK_ID_LIST_CHARS},
        )
    own_key = id_key(task_id)
    for i, parent in enumerate(task_ids):
        validate_id(parent, f"dependsOn.taskIds[{i}]")
        if id_key(parent) == own_key:
            _fail(f"dependsOn.taskIds[{i}]", parent, f"the task {task_id} depends on itself")
    own_int = integer_task_id(task_id)
    for i, entry in enumerate(ranges):
        where = f"dependsOn.taskIdRanges[{i}]"
        if not isinstance(entry, Mapping):
            _fail(where, entry, "must be an object with start and end")
        start, end = entry.get("start"), entry.get("end")
        if not _is_int(start) or not _is_int(end):
            _fail(where, f"{start}-{end}", "start and end must be integers")
        if start < 0 or end < 0:
            _fail(where, f"{start}-{end}", "start and end must not be negative")
        if start > end:
            _fail(where, f"{start}-{end}", f"start ({start}) must not be greater than end ({end})")
        if own_int is not None and start <= own_int <= end:
            _fail(where, f"{start}-{end}", f"the range holds the task {task_id} itself")


def resolve_parents(
    depends_on: Mapping[str, Any] | None,
    *,
    existing: Mapping[str, int],
    integer_ids: IntegerIdLookup | Mapping[int, Sequence[int]],
) -> ResolvedDependencies:
    """Turn a (validated) ``dependsOn`` into the keys of the parent tasks.

    Args:
        depends_on: ``dependsOn`` in wire form, or ``None``.
        existing: The job's tasks, ``{id_key(task id): task key}``.
        integer_ids: The job's tasks with an integer id, ``{integer id: [task keys]}``, or a
            function ``(start, end)`` returning that mapping restricted to the range (so a store
            can answer with an indexed query).

    Returns:
        The parents, the names that matched nothing, and the groups of equivalent parents.
    """
    if not depends_on:
        return ResolvedDependencies(frozenset(), ())
    named: set[int] = set()
    missing: list[str] = []
    for parent in depends_on.get("taskIds") or ():
        key = existing.get(id_key(parent))
        if key is None:
            missing.append(parent)
        else:
            named.add(key)

    by_number: dict[int, set[int]] = {}
    for entry in depends_on.get("taskIdRanges") or ():
        start, end = int(entry["start"]), int(entry["end"])
        selected = _in_range(integer_ids, start, end)
        if not selected:
            missing.append(f"{start}-{end}")
        for number, keys in selected.items():
            by_number.setdefault(number, set()).update(keys)

    parents = set(named)
    requirements = [frozenset({key}) for key in sorted(named)]
    for number in sorted(by_number):
        members = frozenset(by_number[number])
        parents |= members
        # A member named in taskIds is required anyway, and it satisfies this number too.
        if not members & named:
            requirements.append(members)
    return ResolvedDependencies(frozenset(parents), tuple(missing), tuple(requirements))


def dependency_status(
    resolved: ResolvedDependencies,
    *,
    satisfied: Set[int],
    blocked: Set[int],
) -> DependencyStatus:
    """Decide whether a dependent task may run.

    Args:
        resolved: Its parents.
        satisfied: Keys of parents that completed with dependency action ``satisfy``.
        blocked: Keys of parents that completed with dependency action ``block``.

    Returns:
        ``satisfied`` when every dependency is met, ``blocked`` when one never can be,
        ``waiting`` otherwise.
    """
    if any(group <= blocked for group in resolved.requirements):
        return DependencyStatus.BLOCKED
    if all(group & satisfied for group in resolved.requirements):
        return DependencyStatus.SATISFIED
    return DependencyStatus.WAITING


def _in_range(
    integer_ids: IntegerIdLookup | Mapping[int, Sequence[int]], start: int, end: int
) -> Mapping[int, Sequence[int]]:
    """The tasks with an integer id in ``[start, end]``, without walking a huge range."""
    if not isinstance(integer_ids, Mapping):
        return {n: keys for n, keys in integer_ids(start, end).items() if keys}
    if end - start + 1 <= len(integer_ids):
        found = ((n, integer_ids.get(n)) for n in range(start, end + 1))
        return {n: keys for n, keys in found if keys}
    return {n: keys for n, keys in integer_ids.items() if start <= n <= end and keys}


def _is_int(value: object) -> TypeGuard[int]:
    """An ``int`` that is not a ``bool`` (JSON true is no exit code)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _fail(where: str, value: Any, reason: str) -> NoReturn:
    """Raise ``InvalidPropertyValue`` for ``where``."""
    raise invalid_property(where, value, reason)
