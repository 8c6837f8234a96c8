"""Transition tables and the guarded ``transition()``: every edge works, every non-edge raises."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from enum import Enum

import pytest

from prefect_batch.core.states import (
    JOB_SCHEDULE_TRANSITIONS,
    JOB_TRANSITIONS,
    NODE_TRANSITIONS,
    TASK_TRANSITIONS,
    JobScheduleState,
    JobState,
    NodeState,
    TaskState,
    transition,
)
from prefect_batch.exceptions import IllegalTransitionError

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
BEFORE = NOW - timedelta(minutes=5)

TABLES: dict[str, tuple[Mapping[Enum, frozenset[Enum]], type[Enum]]] = {
    "task": (TASK_TRANSITIONS, TaskState),  # type: ignore[dict-item]
    "job": (JOB_TRANSITIONS, JobState),  # type: ignore[dict-item]
    "node": (NODE_TRANSITIONS, NodeState),  # type: ignore[dict-item]
    "schedule": (JOB_SCHEDULE_TRANSITIONS, JobScheduleState),  # type: ignore[dict-item]
}

EDGES = [
    pytest.param(name, src, dst, id=f"{name}:{src.value}->{dst.value}")
    for name, (table, _) in TABLES.items()
    for src, targets in table.items()
    for dst in sorted(targets, key=lambda s: s.value)
]
NON_EDGES = [
    pytest.param(name, src, dst, id=f"{name}:{src.value}-/->{dst.value}")
    for name, (table, enum) in TABLES.items()
    for src in enum
    for dst in enum
    if dst not in table.get(src, frozenset())
]


@pytest.mark.parametrize("name", TABLES)
def test_every_state_has_a_row(name: str) -> None:
    table, enum = TABLES[name]
    assert set(table) == set(enum)


@pytest.mark.parametrize(("name", "src", "dst"), EDGES)
def test_every_edge_is_accepted_and_stamped(name: str, src: Enum, dst: Enum) -> None:
    table, _ = TABLES[name]
    change = transition(table, src, dst, now=NOW, current_since=BEFORE)
    assert change.state == dst.value
    assert change.previous_state == src.value
    assert change.state_transition_time == NOW
    assert change.previous_state_transition_time == BEFORE


@pytest.mark.parametrize(("name", "src", "dst"), NON_EDGES)
def test_every_non_edge_raises(name: str, src: Enum, dst: Enum) -> None:
    table, _ = TABLES[name]
    with pytest.raises(IllegalTransitionError, match=f"{src.value} -> {dst.value}"):
        transition(table, src, dst, now=NOW)


@pytest.mark.parametrize(
    ("table", "src", "dst"),
    [
        (TASK_TRANSITIONS, TaskState.ACTIVE, TaskState.RUNNING),  # must pass through preparing
        (TASK_TRANSITIONS, TaskState.COMPLETED, TaskState.RUNNING),
        (JOB_TRANSITIONS, JobState.COMPLETED, JobState.ACTIVE),
        (JOB_TRANSITIONS, JobState.DELETING, JobState.ACTIVE),
        (JOB_SCHEDULE_TRANSITIONS, JobScheduleState.COMPLETED, JobScheduleState.ACTIVE),
        (JOB_SCHEDULE_TRANSITIONS, JobScheduleState.TERMINATING, JobScheduleState.ACTIVE),
        (NODE_TRANSITIONS, NodeState.LEAVING_POOL, NodeState.IDLE),
        (NODE_TRANSITIONS, NodeState.CREATING, NodeState.RUNNING),
    ],
)
def test_notable_non_edges(table: Mapping[Enum, frozenset[Enum]], src: Enum, dst: Enum) -> None:
    with pytest.raises(IllegalTransitionError):
        transition(table, src, dst, now=NOW)


def test_first_stamp_has_no_previous_time() -> None:
    change = transition(TASK_TRANSITIONS, TaskState.ACTIVE, TaskState.PREPARING, now=NOW)
    assert change.previous_state_transition_time is None
    assert change.state_transition_time == NOW


def test_illegal_transition_records_nothing() -> None:
    # The guard raises before building a change: the caller has nothing to write.
    with pytest.raises(IllegalTransitionError):
        transition(JOB_TRANSITIONS, JobState.DELETING, JobState.COMPLETED, now=NOW)
