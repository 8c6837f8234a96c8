"""Multi-instance tasks on their nodes: coordination everywhere, then the primary's command.

:class:`Gangs` is a part of :class:`~prefect_batch.service.engine.Engine`. The scheduler places a
multi-instance task on ``numberOfInstances`` whole nodes at once (``core.scheduler``); the
dispatcher hands the placement here. Then, as in Azure Batch:

1. every node runs the coordination command (``c<task>-<attempt>-<index>``, index 0 on the
   primary), with ``AZ_BATCH_HOST_LIST``, ``AZ_BATCH_NODE_LIST``, ``AZ_BATCH_MASTER_NODE``,
   ``AZ_BATCH_IS_CURRENT_NODE_MASTER``, ``CCP_NODES`` and ``AZ_BATCH_TASK_SHARED_DIR``, after the
   common resource files were downloaded to the task directory; what a coordination command
   starts in the background keeps running after it exits;
2. once every coordination command exited with 0, the primary runs the task's command line as
   an ordinary run (``t<task>-<attempt>``), so its end completes the task through the usual
   path: its exit code is the task's, exit conditions and retries apply to the whole task;
3. a coordination command that fails ends the whole attempt with its outcome (retried as a
   unit, up to the task's retry limit);
4. when the attempt is over for any reason — the primary ended, a subtask failed, the task was
   terminated or deleted, or requeued because one of its nodes went away — every node's runs
   and background processes of this attempt are killed and the subtask nodes' slots freed.

``maxWallClockTime`` counts from the start of the coordination commands: they run with it, and
the primary's command gets what is left. The per-instance rows (``subtasks``) are what
``subtasksinfo`` lists.

A job's preparation task runs on each node before its coordination command (as before any
task); where it fails with ``waitForSuccess``, the whole task is requeued and is not placed on
that node again for that job.

What it does not do: carry an attempt in flight across an engine restart (the task is
requeued when its nodes say hello to the new engine, see :meth:`Gangs.requeue_orphans`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, case, delete, insert, select, update

from prefect_batch.core.commandline import split_command_line
from prefect_batch.core.completion import AttemptOutcome
from prefect_batch.service.rows import lifecycle
from prefect_batch.store.schema import nodes, subtasks, tasks

__all__ = ["MASTER_PORT", "Gangs", "instances_of", "multi_instance_environment"]

log = logging.getLogger(__name__)

MASTER_PORT = 6000
"""The port ``AZ_BATCH_MASTER_NODE`` names, as in Azure (reserved: tasks use their own)."""

_RELEASE_SLOT = (
    update(nodes)
    .where(nodes.c.pk == bindparam("b_pk"))
    .values(
        running_tasks=case((nodes.c.running_tasks > 0, nodes.c.running_tasks - 1), else_=0),
        running_slots=case((nodes.c.running_slots > 0, nodes.c.running_slots - 1), else_=0),
    )
)
_SUBTASK_STARTED = (
    update(subtasks)
    .where(
        subtasks.c.task_pk == bindparam("b_task"),
        subtasks.c.idx == bindparam("b_idx"),
        subtasks.c.attempt == bindparam("b_attempt"),
        subtasks.c.state == "preparing",
    )
    .values(
        state="running",
        previous_state="preparing",
        previous_state_transition_time=subtasks.c.state_transition_time,
        state_transition_time=bindparam("b_now"),
        start_time=bindparam("b_now"),
    )
)


def instances_of(spec: Mapping[str, Any] | None) -> int:
    """``multiInstanceSettings.numberOfInstances`` of a task spec (1 for an ordinary task)."""
    multi = (spec or {}).get("multiInstanceSettings")
    if not multi:
        return 1
    return int(multi.get("numberOfInstances") or 1)


def multi_instance_environment(addresses: list[str], index: int) -> dict[str, str]:
    """The variables of instance ``index`` of a task on nodes with ``addresses`` (primary first).

    Formats as Azure documents them: ``AZ_BATCH_HOST_LIST`` comma separated,
    ``AZ_BATCH_NODE_LIST`` semicolon separated, ``AZ_BATCH_MASTER_NODE`` ``ip:6000``, and
    ``CCP_NODES`` the count followed by ``ip cores`` pairs (one core each: a node runs one
    instance).
    """
    return {
        "AZ_BATCH_HOST_LIST": ",".join(addresses),
        "AZ_BATCH_NODE_LIST": ";".join(addresses),
        "AZ_BATCH_MASTER_NODE": f"{addresses[0]}:{MASTER_PORT}",
        "AZ_BATCH_IS_CURRENT_NODE_MASTER": "true" if index == 0 else "false",
        "CCP_NODES": " ".join([str(len(addresses))] + [f"{a} 1" for a in addresses]),
    }


def parse_key(key: str) -> tuple[int, int, int] | None:
    """``c<task_pk>-<attempt>-<index>`` -> (task_pk, attempt, index)."""
    parts = key[1:].split("-")
    if not key.startswith("c") or len(parts) != 3:
        return None
    try:
        pk, attempt, index = (int(p) for p in parts)
    except ValueError:
        return None
    return pk, attempt, index


@dataclass
class _Gang:
    """One attempt of a multi-instance task that this engine runs."""

    task_pk: int
    attempt: int
    nodes: list[int]
    """Node pks, the primary's first."""
    app: dict[str, Any]
    """The primary's run request, sent once every coordination command succeeded."""
    wall: float | None
    requeues: int
    """The task's ``requeueCount`` when this attempt was dispatched."""
    start: float | None = None
    coordinated: set[int] = field(default_factory=set)
    app_sent: bool = False
    failed: bool = False
    kills_sent: bool = False


class Gangs:
    """Runs the multi-instance tasks of the engine's pools (see the module docstring).

    Args:
        nodes: The engine's node runtimes by node pk.
    """

    def __init__(self, nodes: Mapping[int, Any]) -> None:
        self._nodes = nodes
        self._gangs: dict[int, _Gang] = {}

    def __bool__(self) -> bool:
        return bool(self._gangs)

    def start(
        self,
        conn: Any,
        r: Any,
        rts: list[Any],
        app: dict[str, Any],
        now: float,
        send: Callable[[Any, dict[str, Any]], None],
    ) -> None:
        """Record a placed attempt and send the coordination commands (in the dispatch step).

        ``r`` is the task's run row (``_RUN_ROWS``), ``rts`` its nodes (primary first), ``app``
        the primary's run request, built as for any task, and ``send(rt, request)`` sends a
        request to a node once the job's preparation task succeeded there.
        """
        multi = r.spec["multiInstanceSettings"]
        addresses = [rt.address or "127.0.0.1" for rt in rts]
        conn.execute(delete(subtasks).where(subtasks.c.task_pk == r.pk))
        conn.execute(
            insert(subtasks),
            [
                {
                    "task_pk": r.pk,
                    "idx": i,
                    "attempt": r.attempt,
                    "node_pk": rt.pk,
                    "node_id": rt.node_id,
                    "pool_id": rt.pool_id,
                    "address": addresses[i],
                    "state": "preparing",
                    "state_transition_time": now,
                }
                for i, rt in enumerate(rts)
            ],
        )
        argv = split_command_line(multi["coordinationCommandLine"])
        common = multi.get("commonResourceFiles")
        for i, rt in enumerate(rts):
            env = {**app["env"], "AZ_BATCH_NODE_ID": rt.node_id}
            env["AZ_BATCH_NODE_IS_DEDICATED"] = "true" if rt.dedicated else "false"
            env.update(multi_instance_environment(addresses, i))
            run = {
                "op": "run",
                "key": f"c{r.pk}-{r.attempt}-{i}",
                "argv": argv,
                "dir": app["dir"],
                "env": env,
                "wall_clock_seconds": r.wall_clock_seconds,
                "job_prep_dir": app.get("job_prep_dir"),
                "instance": "coordination",
            }
            if "confine" in app:
                run["confine"] = app["confine"]
            if common:
                run["stage"] = {"resourceFiles": common, "account": rt.account}
            send(rt, run)
        app["env"].update(multi_instance_environment(addresses, 0))
        app["instance"] = "primary"
        self._gangs[r.pk] = _Gang(
            r.pk, r.attempt, [rt.pk for rt in rts], app, r.wall_clock_seconds, r.requeue_count
        )

    def on_started(self, conn: Any, key: str, msg: dict[str, Any], now: float) -> dict | None:
        """A coordination command started; returns the task's start (for index 0) or None."""
        parsed = parse_key(key)
        if parsed is None:
            return None
        pk, attempt, index = parsed
        when = msg.get("time", now)
        conn.execute(
            _SUBTASK_STARTED, {"b_task": pk, "b_idx": index, "b_attempt": attempt, "b_now": when}
        )
        gang = self._gangs.get(pk)
        if gang is not None and gang.attempt == attempt and gang.start is None:
            gang.start = when
        if index == 0:
            return {"b_pk": pk, "b_attempt": attempt, "b_start": when}
        return None

    def on_exited(
        self,
        conn: Any,
        key: str,
        msg: dict[str, Any],
        outcome: AttemptOutcome,
        now: float,
        sends: dict[int, list[dict[str, Any]]],
    ) -> lifecycle.Attempt | None:
        """A coordination command ended: record it; the attempt's end if it failed."""
        parsed = parse_key(key)
        if parsed is None:
            return None
        pk, attempt, index = parsed
        ok = outcome.kind == "exited" and outcome.exit_code == 0
        failure = None
        if not ok and outcome.error_code:
            failure = {
                "category": outcome.error_category,
                "code": outcome.error_code,
                "message": outcome.error_message,
            }
        conn.execute(
            update(subtasks)
            .where(
                subtasks.c.task_pk == pk,
                subtasks.c.idx == index,
                subtasks.c.attempt == attempt,
                subtasks.c.state != "completed",
            )
            .values(
                state="completed",
                previous_state=subtasks.c.state,
                previous_state_transition_time=subtasks.c.state_transition_time,
                state_transition_time=now,
                start_time=case(
                    (subtasks.c.start_time.is_(None), msg.get("start_time")),
                    else_=subtasks.c.start_time,
                ),
                end_time=msg.get("end_time") or now,
                exit_code=outcome.exit_code,
                result="success" if ok else "failure",
                failure_info=failure,
            )
        )
        gang = self._gangs.get(pk)
        if gang is None or gang.attempt != attempt or gang.app_sent or gang.failed:
            return None  # an attempt that is over, or one being ended
        if not ok:
            # Once: the other instances' ends (killed next) must not complete it again.
            gang.failed = True
            log.info("coordination command %s failed: the task's attempt ends", key)
            return lifecycle.Attempt(pk, attempt, outcome, msg.get("start_time"), now)
        gang.coordinated.add(index)
        if len(gang.coordinated) == len(gang.nodes):
            primary = self._nodes.get(gang.nodes[0])
            if primary is None:
                return None  # its node is going; the next check requeues the task
            gang.app_sent = True
            if gang.wall is not None:
                left = gang.wall - (now - (gang.start if gang.start is not None else now))
                gang.app["wall_clock_seconds"] = max(left, 0.001)
            sends[primary.pk].append(gang.app)
        return None

    def check(self, conn: Any, now: float, sends: dict[int, list[dict[str, Any]]]) -> None:
        """End the attempts that are over; kill the coordination of terminated tasks.

        An attempt is over when its task is no longer in flight with that attempt: completed,
        retried, requeued (one of its nodes went away) or deleted. Then every run and
        background process of it is killed and the subtask nodes' slots are freed; so is the
        primary's when the task was requeued by a node loss (a completion frees it itself).
        """
        if not self._gangs:
            return
        rows = {
            r.pk: r
            for r in conn.execute(
                select(
                    tasks.c.pk,
                    tasks.c.state,
                    tasks.c.attempt,
                    tasks.c.kill_reason,
                    tasks.c.requeue_count,
                ).where(tasks.c.pk.in_(list(self._gangs)))
            ).all()
        }
        for pk, gang in list(self._gangs.items()):
            row = rows.get(pk)
            live = (
                row is not None and row.state in lifecycle.IN_FLIGHT and row.attempt == gang.attempt
            )
            if live:
                if row.kill_reason is not None and not gang.app_sent and not gang.kills_sent:
                    # Terminated during coordination: the primary's run was never sent, so
                    # the coordination commands' ends carry the termination.
                    gang.kills_sent = True
                    for i, node_pk in enumerate(gang.nodes):
                        self._send(sends, node_pk, f"c{pk}-{gang.attempt}-{i}")
                continue
            del self._gangs[pk]
            # Requeued (a node went away): nobody freed the primary's slot. Completed or retried:
            # the usual completion of the primary's run (or of the failed coordination) did.
            requeued = row is not None and row.requeue_count > gang.requeues
            self._end(conn, gang, now, sends, free_primary=requeued or row is None)

    def _end(
        self,
        conn: Any,
        gang: _Gang,
        now: float,
        sends: dict[int, list[dict[str, Any]]],
        *,
        free_primary: bool,
    ) -> None:
        for i, node_pk in enumerate(gang.nodes):
            self._send(sends, node_pk, f"c{gang.task_pk}-{gang.attempt}-{i}")
            if i == 0:
                self._send(sends, node_pk, f"t{gang.task_pk}-{gang.attempt}")
                if not free_primary:
                    continue
            rt = self._nodes.get(node_pk)
            conn.execute(_RELEASE_SLOT, {"b_pk": node_pk})
            if rt is not None:
                rt.free_slots = min(rt.total_slots, rt.free_slots + 1)
        conn.execute(
            update(subtasks)
            .where(
                subtasks.c.task_pk == gang.task_pk,
                subtasks.c.attempt == gang.attempt,
                subtasks.c.state != "completed",
            )
            .values(
                state="completed",
                previous_state=subtasks.c.state,
                previous_state_transition_time=subtasks.c.state_transition_time,
                state_transition_time=now,
                result="failure",
            )
        )

    def _send(self, sends: dict[int, list[dict[str, Any]]], node_pk: int, key: str) -> None:
        rt = self._nodes.get(node_pk)
        if rt is not None and rt.ready:
            sends[node_pk].append({"op": "kill", "key": key, "grace_seconds": None})

    def requeue_orphans(self, conn: Any, in_flight: list[Any], now: float) -> None:
        """Requeue the multi-instance tasks among a node's ``in_flight`` that no gang runs.

        They were dispatched by an engine that is gone (this one before a restart, or another):
        their coordination state is lost, so the attempt starts over elsewhere, as a task on a
        lost node does. The next :meth:`check` kills what is left of them on the nodes this
        engine reaches and frees their slots.
        """
        unknown = [r for r in in_flight if r.pk not in self._gangs]
        if not unknown:
            return
        members: dict[int, list[Any]] = {}
        for s in conn.execute(
            select(subtasks.c.task_pk, subtasks.c.idx, subtasks.c.attempt, subtasks.c.node_pk)
            .where(subtasks.c.task_pk.in_([r.pk for r in unknown]))
            .order_by(subtasks.c.task_pk, subtasks.c.idx)
        ).all():
            members.setdefault(s.task_pk, []).append(s)
        orphans = [r for r in unknown if r.pk in members and members[r.pk][0].attempt == r.attempt]
        if not orphans:
            return
        counts = dict(
            conn.execute(
                select(tasks.c.pk, tasks.c.requeue_count).where(
                    tasks.c.pk.in_([r.pk for r in orphans])
                )
            ).all()
        )
        for r in orphans:
            log.info("multi-instance task %s lost its engine: requeued", r.pk)
            self._gangs[r.pk] = _Gang(
                r.pk, r.attempt, [s.node_pk for s in members[r.pk]], {}, None, counts[r.pk]
            )
            self._gangs[r.pk].app_sent = True  # nothing more is sent for it
        lifecycle.requeue_tasks(conn, orphans, now)

    def forget(self) -> None:
        """The engine stops: what it ran is recovered (or requeued) by the next one."""
        self._gangs.clear()
