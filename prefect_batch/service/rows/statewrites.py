"""Guarded writes of task, job and pool states: every change is an edge of its ``core.states``
table.

An :class:`Edge` names the states a write may start from and the one it goes to; it is checked
against ``TASK_TRANSITIONS``, ``JOB_TRANSITIONS``, ``POOL_TRANSITIONS`` or
``ALLOCATION_TRANSITIONS`` (a pool's ``allocation_state``) when it is made, so an edge the table
lacks raises :class:`~prefect_batch.exceptions.IllegalTransitionError` at import. Its statements
are ``UPDATE ... SET state = :to ... WHERE ... AND state IN (:from)``: a row in any other state is
not matched, so it keeps its state (the write is refused for that row). Where the caller knows
how many rows it means to move (``expected``), a refusal is logged at warning.

A write made with ``only_from=True`` means its from-states as a condition, not a claim: rows in
other states are skipped by design (a late report about a task that has moved on) and are
neither logged nor raised about.

With ``PREFECT_BATCH_STRICT_STATES=1`` (the test suite sets it) a write first looks for rows it
would refuse and raises ``IllegalTransitionError`` naming them, before changing anything.

Hot statements are built once at import (:meth:`Edge.statement`); one-off writes build theirs
per call (:meth:`Edge.write`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from enum import Enum
from typing import Any

from sqlalchemy import Connection, Table, not_, or_, select, update
from sqlalchemy.sql import ColumnElement

from prefect_batch.core.states import (
    ALLOCATION_TRANSITIONS,
    JOB_TRANSITIONS,
    POOL_TRANSITIONS,
    TASK_TRANSITIONS,
    AllocationState,
    JobState,
    PoolState,
    TaskState,
)
from prefect_batch.exceptions import IllegalTransitionError
from prefect_batch.store.schema import jobs, pools, tasks

__all__ = [
    "POOL_RESIZING",
    "POOL_SETTLED",
    "STRICT_ENV",
    "Edge",
    "GuardedWrite",
    "allocation_edge",
    "job_edge",
    "pool_edge",
    "strict",
    "task_edge",
]

log = logging.getLogger("prefect_batch.engine")

STRICT_ENV = "PREFECT_BATCH_STRICT_STATES"
"""Set to ``1`` to make a refused state write raise instead of leaving its rows unchanged."""


def strict() -> bool:
    """Whether a write that would take a row along an illegal edge raises."""
    return os.environ.get(STRICT_ENV) == "1"


class Edge:
    """Legal moves of one resource's rows from ``from_states`` to ``to``.

    Raises:
        IllegalTransitionError: Some ``from -> to`` is not in ``transitions``.
    """

    def __init__(
        self,
        table: Table,
        transitions: Mapping[Any, frozenset[Any]],
        from_states: Sequence[Enum],
        to: Enum,
        *,
        column: str = "state",
        kind: str | None = None,
    ) -> None:
        if not from_states:
            raise ValueError("an edge needs at least one state to start from")
        bad = [s.value for s in from_states if to not in transitions.get(s, frozenset())]
        if bad:
            raise IllegalTransitionError(
                f"illegal transition {type(to).__name__}: {', '.join(bad)} -> {to.value}"
            )
        self.table = table
        self.column = column
        self.kind = kind or table.name.rstrip("s")
        self.from_states = tuple(s.value for s in from_states)
        self.to = to.value

    def __repr__(self) -> str:
        return f"<{self.kind} edge {'|'.join(self.from_states)} -> {self.to}>"

    def statement(
        self, *where: ColumnElement[bool], only_from: bool = False, **values: Any
    ) -> GuardedWrite:
        """The guarded write of rows matching ``where``, setting ``values`` with the state."""
        return GuardedWrite(self, where, values, only_from=only_from)

    def write(
        self,
        conn: Connection,
        *where: ColumnElement[bool],
        expected: int | None = None,
        only_from: bool = False,
        **values: Any,
    ) -> int:
        """Build and run a one-off guarded write; the number of rows moved."""
        return self.statement(*where, only_from=only_from, **values).execute(
            conn, expected=expected
        )

    def move(self, conn: Connection, row: Any, now: float, **values: Any) -> int:
        """Move one row (by its ``pk``) along this edge, as a request does.

        Stamps the row's state and its time as the previous ones, the transition and
        modification times, and a new version, besides ``values``.
        """
        c = self.table.c
        return self.write(
            conn,
            c.pk == row.pk,
            expected=1,
            previous_state=row.state,
            previous_state_transition_time=row.state_transition_time,
            state_transition_time=now,
            last_modified=now,
            version=c.version + 1,
            **values,
        )


class GuardedWrite:
    """``UPDATE`` of an edge's rows: only those in one of its from-states are moved."""

    def __init__(
        self,
        edge: Edge,
        where: Sequence[ColumnElement[bool]],
        values: Mapping[str, Any],
        *,
        only_from: bool = False,
    ) -> None:
        state = edge.table.c[edge.column]
        self.edge = edge
        self.only_from = only_from
        # Equalities rather than IN: an expanding IN cannot be run with executemany.
        allowed = or_(*(state == s for s in edge.from_states))
        self.update = (
            update(edge.table).where(*where, allowed).values({edge.column: edge.to, **values})
        )
        self.refused = select(edge.table.c.pk, state.label("state")).where(*where, not_(allowed))

    def execute(
        self,
        conn: Connection,
        params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
        *,
        expected: int | None = None,
    ) -> int:
        """Run the write (``params`` as for ``conn.execute``); the number of rows moved.

        Raises:
            IllegalTransitionError: In strict mode, some row matched would be refused.
        """
        if self.only_from:
            return conn.execute(self.update, params).rowcount
        if strict():
            self._refuse_illegal(conn, params)
        rowcount = conn.execute(self.update, params).rowcount
        many = isinstance(params, Sequence) and len(params) > 1
        counted = not many or conn.dialect.supports_sane_multi_rowcount
        if expected is not None and counted and rowcount < expected:
            log.warning(
                "%s: %d of %d rows refused (not in a state the edge starts from)",
                self.edge,
                expected - rowcount,
                expected,
            )
        return rowcount

    def _refuse_illegal(
        self, conn: Connection, params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None
    ) -> None:
        sets = params if isinstance(params, Sequence) else [params]
        bad = [r for p in sets for r in conn.execute(self.refused, p).all()]
        if bad:
            raise IllegalTransitionError(
                f"illegal transition of {self.edge.kind} rows "
                + ", ".join(f"{r.pk}: {r.state} -> {self.edge.to}" for r in bad)
                + f" ({self.edge!r})"
            )


def task_edge(from_states: Sequence[TaskState], to: TaskState) -> Edge:
    """An edge of ``TASK_TRANSITIONS`` (raises ``IllegalTransitionError`` if it is not one)."""
    return Edge(tasks, TASK_TRANSITIONS, from_states, to)


def job_edge(from_states: Sequence[JobState], to: JobState) -> Edge:
    """An edge of ``JOB_TRANSITIONS`` (raises ``IllegalTransitionError`` if it is not one)."""
    return Edge(jobs, JOB_TRANSITIONS, from_states, to)


def pool_edge(from_states: Sequence[PoolState], to: PoolState) -> Edge:
    """An edge of ``POOL_TRANSITIONS`` (raises ``IllegalTransitionError`` if it is not one)."""
    return Edge(pools, POOL_TRANSITIONS, from_states, to)


def allocation_edge(from_states: Sequence[AllocationState], to: AllocationState) -> Edge:
    """An edge of ``ALLOCATION_TRANSITIONS``, a pool's ``allocation_state`` (raises
    ``IllegalTransitionError`` if it is not one)."""
    return Edge(
        pools, ALLOCATION_TRANSITIONS, from_states, to, column="allocation_state", kind="allocation"
    )


POOL_RESIZING = allocation_edge((AllocationState.STEADY,), AllocationState.RESIZING)
"""A steady pool starts resizing (a resize, nodes removed, new targets from a formula)."""
POOL_SETTLED = allocation_edge(
    (AllocationState.RESIZING, AllocationState.STOPPING), AllocationState.STEADY
)
"""A resize ends: target reached, timed out, placement short, or stopped."""
