"""Job preparation and release tasks on nodes (:class:`JobTasks`, a part of the engine).

Preparation runs on a node before the first task of its job there, in
``<root>/<JOB_ID>/<prep id>``; with ``waitForSuccess`` (default) the job's tasks wait on that node
until it exits 0, and after it failed (retries spent) the job's tasks are not placed on that
node again (until a reboot or reimage); the node stays usable for other jobs. It runs again after
a reimage, and after a reboot when ``rerunOnNodeRebootAfterSuccess`` (default) or when it had
not succeeded. Release runs when the job ends, on every node that ran preparation (max 15
minutes); the job is ``completed`` only after all of them. The status per node is in the
``job_nodes`` table.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from sqlalchemy import and_, delete, insert, select, update

from prefect_batch.core.commandline import split_command_line
from prefect_batch.core.completion import AttemptOutcome, decide
from prefect_batch.core.states import TaskExecutionResult
from prefect_batch.service.engine.confinement import elevation_refusal, run_confinement
from prefect_batch.service.engine.dispatcher import (
    base_environment,
    completed_info,
    settings_env,
    stage_request,
)
from prefect_batch.service.rows import lifecycle
from prefect_batch.service.rows.common import iso, seconds
from prefect_batch.store.schema import job_nodes, jobs

__all__ = ["RELEASE_MAX_SECONDS", "JobTasks"]

RELEASE_MAX_SECONDS = 15 * 60.0
"""Azure's limit (and default) for a job release task's wall clock."""


def prep_id(job_spec: dict[str, Any]) -> str:
    """The job preparation task's id (default ``jobpreparation``)."""
    return (job_spec.get("jobPreparationTask") or {}).get("id") or "jobpreparation"


def release_id(job_spec: dict[str, Any]) -> str:
    """The job release task's id (default ``jobrelease``)."""
    return (job_spec.get("jobReleaseTask") or {}).get("id") or "jobrelease"


class JobTasks:
    """Preparation before a job's first task on a node; release when the job ends.

    Args:
        nodes: The engine's node runtimes by node pk (read here, never changed).
        pool_of: The engine's leased pool by pool pk, or None.
        account_urls: Base URL per account, for ``AZ_BATCH_ACCOUNT_URL``.
        node_counts: Changes a node's running task and slot counts in the caller's
            transaction (the node runtime's).
    """

    def __init__(
        self,
        nodes: Mapping[int, Any],
        pool_of: Callable[[int], Any],
        account_urls: Mapping[str, str],
        node_counts: Callable[[Any, int, int, int], None],
    ) -> None:
        self._nodes = nodes
        self._pool_of = pool_of
        self.account_urls = account_urls
        self._node_counts = node_counts
        self.prep_failures: dict[int, set[int]] = {}
        """Per job, the nodes (this boot) where its preparation failed with waitForSuccess."""

    def load_prep_failures(self, conn: Any, rt: Any) -> None:
        """Remember the node's failed preparations of this boot (after an engine restart)."""
        for job_set in self.prep_failures.values():
            job_set.discard(rt.pk)
        rows = conn.execute(
            select(job_nodes.c.job_pk, job_nodes.c.prep_info, jobs.c.spec)
            .join(jobs, jobs.c.pk == job_nodes.c.job_pk)
            .where(
                job_nodes.c.node_pk == rt.pk,
                job_nodes.c.prep_state == "completed",
                job_nodes.c.prep_boot == rt.boot_id,
            )
        ).all()
        for r in rows:
            prep = (r.spec or {}).get("jobPreparationTask") or {}
            if (r.prep_info or {}).get("result") == "failure" and prep.get("waitForSuccess", True):
                self.prep_failures.setdefault(r.job_pk, set()).add(rt.pk)

    # -- preparation -----------------------------------------------------------------------

    def _prep_rows(self, conn: Any, job_pks: set[int], node_pks: set[int]) -> dict[tuple, Any]:
        if not job_pks or not node_pks:
            return {}
        rows = conn.execute(
            select(job_nodes).where(
                job_nodes.c.job_pk.in_(list(job_pks)), job_nodes.c.node_pk.in_(list(node_pks))
            )
        ).all()
        return {(r.job_pk, r.node_pk): r for r in rows}

    def _prep_done(self, row: Any, prep: dict[str, Any], rt: Any) -> str:
        """'ok' (tasks may run), 'running', 'failed' (not on this node) or 'needed'."""
        if row is None or row.prep_state is None:
            return "needed"
        if row.prep_state == "running":
            return "running"
        info = row.prep_info or {}
        if info.get("result") == "success":
            rerun = prep.get("rerunOnNodeRebootAfterSuccess", True)
            if rerun and row.prep_boot != rt.boot_id:
                return "needed"
            return "ok"
        if row.prep_boot != rt.boot_id:
            return "needed"
        return "failed" if prep.get("waitForSuccess", True) else "ok"

    def filter_prep_failed(
        self,
        conn: Any,
        placed: list[tuple[int, str]],
        job_of: dict[int, int],
        job_rows: dict[int, Any],
        *,
        slots_of: dict[int, int] | None = None,
        rts: list[Any] | None = None,
        fill: str = "spread",
    ) -> list[tuple[int, str]]:
        with_prep = {pk for pk, r in job_rows.items() if (r.spec or {}).get("jobPreparationTask")}
        if not with_prep:
            return placed
        node_pks = {int(n) for _, n in placed} | {rt.pk for rt in rts or []}
        pairs = self._prep_rows(conn, with_prep, node_pks)

        def failed_on(pk: int, node: str) -> bool:
            job_pk = job_of[pk]
            if job_pk not in with_prep:
                return False
            prep = job_rows[job_pk].spec["jobPreparationTask"]
            rt = self._nodes[int(node)]
            return self._prep_done(pairs.get((job_pk, int(node))), prep, rt) == "failed"

        kept: list[tuple[int, str]] = []
        dropped: list[tuple[int, str]] = []
        for pk, node in placed:
            (dropped if failed_on(pk, node) else kept).append((pk, node))
        if dropped and rts and slots_of:
            # Place a task dropped here on another node with room where its job's preparation
            # did not fail: left queued, it would be given the same node again on every pass
            # (it heads the queue, the free slots are the same) and never run.
            free = {str(rt.pk): rt.free_slots for rt in rts}
            for pk, node in kept:
                free[node] -= slots_of[pk]
            for pk, _ in dropped:
                need = slots_of[pk]
                fits = [n for n, f in free.items() if f >= need and not failed_on(pk, n)]
                if not fits:
                    continue  # stays queued: no node can run it now
                pick = (max if fill == "spread" else min)(fits, key=lambda n: free[n])
                free[pick] -= need
                kept.append((pk, pick))
        return kept

    def send_after_prep(
        self,
        conn: Any,
        r: Any,
        pool: Any,
        rt: Any,
        message: dict[str, Any],
        now: float,
        sends: dict[int, list[dict[str, Any]]],
    ) -> None:
        prep = (r.job_spec or {}).get("jobPreparationTask")
        if not prep:
            sends[rt.pk].append(message)
            return
        row = self._prep_rows(conn, {r.job_pk}, {rt.pk}).get((r.job_pk, rt.pk))
        state = self._prep_done(row, prep, rt)
        if state == "needed":
            self._start_prep(conn, r.job_pk, r.job_id, r.job_spec, pool, rt, row, 0, now, sends)
            state = "running"
        if state == "running" and prep.get("waitForSuccess", True):
            rt.held[r.job_pk].append(message)
        else:
            sends[rt.pk].append(message)

    def _start_prep(
        self,
        conn: Any,
        job_pk: int,
        job_id: str,
        job_spec: dict[str, Any],
        pool: Any,
        rt: Any,
        row: Any,
        retry: int,
        now: float,
        sends: dict[int, list[dict[str, Any]]],
    ) -> None:
        prep = job_spec["jobPreparationTask"]
        pid = prep_id(job_spec)
        info = {
            "state": "running",
            "startTime": iso(now),
            "taskRootDirectory": f"{job_id}/{pid}",
            "retryCount": retry,
        }
        values = {"prep_state": "running", "prep_info": info, "prep_boot": rt.boot_id}
        if row is None:
            conn.execute(
                insert(job_nodes).values(
                    job_pk=job_pk, node_pk=rt.pk, node_id=rt.node_id, pool_id=pool.id, **values
                )
            )
        else:
            conn.execute(
                update(job_nodes)
                .where(job_nodes.c.job_pk == job_pk, job_nodes.c.node_pk == rt.pk)
                .values(**values)
            )
        env = settings_env(
            job_spec.get("commonEnvironmentSettings"), prep.get("environmentSettings")
        )
        base_url = self.account_urls.get(pool.account, "embedded://local")
        env.update(
            base_environment(pool.account, base_url, pool.id, rt.node_id, dedicated=rt.dedicated)
        )
        env.update(AZ_BATCH_JOB_ID=job_id, AZ_BATCH_TASK_ID=pid)
        sends[rt.pk].append(
            {
                "op": "run",
                "key": f"p{job_pk}-{rt.pk}-{retry}",
                "argv": split_command_line(prep["commandLine"]),
                "dir": f"{job_id}/{pid}",
                "env": env,
                "wall_clock_seconds": seconds(
                    (prep.get("constraints") or {}).get("maxWallClockTime")
                ),
                "job_prep_dir": None,
                "certs": "task",
                **stage_request(prep, pool.account),
                **run_confinement(prep),
                **elevation_refusal(prep, rt.agent_uid),
            }
        )

    def on_prep_exit(
        self,
        conn: Any,
        rt: Any,
        key: str,
        outcome: AttemptOutcome,
        msg: dict[str, Any],
        now: float,
        sends: dict[int, list[dict[str, Any]]],
    ) -> None:
        try:
            job_pk_s, node_pk_s, retry_s = key[1:].split("-")
            job_pk, retry = int(job_pk_s), int(retry_s)
        except ValueError:
            return
        job = conn.execute(select(jobs).where(jobs.c.pk == job_pk)).one_or_none()
        row = self._prep_rows(conn, {job_pk}, {rt.pk}).get((job_pk, rt.pk))
        if job is None or row is None or row.prep_state != "running":
            rt.held.pop(job_pk, None)
            return
        prep = job.spec.get("jobPreparationTask") or {}
        max_retries = (prep.get("constraints") or {}).get("maxTaskRetryCount", 0)
        decision = decide(
            outcome,
            retry_count=retry,
            max_task_retry_count=max_retries,
            exit_conditions=None,
            task_failure_mode="noaction",
        )
        pool = self._pool_of(rt.pool_pk)
        if decision.retry and pool is not None:
            self._start_prep(conn, job_pk, job.id, job.spec, pool, rt, row, retry + 1, now, sends)
            return
        info = {**(row.prep_info or {}), **completed_info(decision, msg, now)}
        if retry:
            info["lastRetryTime"] = iso(now)
        conn.execute(
            update(job_nodes)
            .where(job_nodes.c.job_pk == job_pk, job_nodes.c.node_pk == rt.pk)
            .values(prep_state="completed", prep_info=info)
        )
        held = rt.held.pop(job_pk, [])
        if decision.result == TaskExecutionResult.SUCCESS or not prep.get("waitForSuccess", True):
            sends[rt.pk].extend(held)
            return
        self.prep_failures.setdefault(job_pk, set()).add(rt.pk)
        # Failed with waitForSuccess: the held tasks go back to the queue for other nodes.
        keys = [m["key"] for m in held]
        pks = [int(k[1:].split("-")[0]) for k in keys]
        if pks:
            # With the multi-instance tasks that wait here for a subtask (requeued as a whole).
            wanted = set(pks)
            in_flight = [r for r in lifecycle.running_task_rows(conn, rt.pk) if r.pk in wanted]
            lifecycle.requeue_tasks(conn, in_flight, now)
            freed = sum(r.required_slots for r in in_flight)
            self._node_counts(conn, rt.pk, -len(in_flight), -freed)
            rt.free_slots = min(rt.total_slots, rt.free_slots + freed)

    # -- release ---------------------------------------------------------------------------

    def release_poll(self, conn: Any, now: float, sends: dict[int, list[dict[str, Any]]]) -> None:
        mine = [pk for pk, rt in self._nodes.items() if rt.ready]
        if not mine:
            return
        rows = conn.execute(
            select(
                job_nodes, jobs.c.id.label("job_id"), jobs.c.spec.label("job_spec"), jobs.c.account
            )
            .join(jobs, jobs.c.pk == job_nodes.c.job_pk)
            .where(job_nodes.c.release_state == "pending", job_nodes.c.node_pk.in_(mine))
        ).all()
        for r in rows:
            rt = self._nodes[r.node_pk]
            release = (r.job_spec or {}).get("jobReleaseTask") or {}
            rid = release_id(r.job_spec)
            env = settings_env(
                (r.job_spec or {}).get("commonEnvironmentSettings"),
                release.get("environmentSettings"),
            )
            base_url = self.account_urls.get(r.account, "embedded://local")
            env.update(
                base_environment(r.account, base_url, r.pool_id, rt.node_id, dedicated=rt.dedicated)
            )
            env.update(AZ_BATCH_JOB_ID=r.job_id, AZ_BATCH_TASK_ID=rid)
            wall = seconds(release.get("maxWallClockTime")) or RELEASE_MAX_SECONDS
            sends[rt.pk].append(
                {
                    "op": "run",
                    "key": f"r{r.job_pk}-{rt.pk}",
                    "argv": split_command_line(release["commandLine"]),
                    "dir": f"{r.job_id}/{rid}",
                    "env": env,
                    "wall_clock_seconds": min(wall, RELEASE_MAX_SECONDS),
                    "job_prep_dir": f"{r.job_id}/{prep_id(r.job_spec)}",
                    "certs": "task",
                    **stage_request(release, r.account),
                    **run_confinement(release),
                    **elevation_refusal(release, rt.agent_uid),
                }
            )
            conn.execute(
                update(job_nodes)
                .where(job_nodes.c.job_pk == r.job_pk, job_nodes.c.node_pk == rt.pk)
                .values(
                    release_state="running",
                    release_info={
                        "state": "running",
                        "startTime": iso(now),
                        "taskRootDirectory": f"{r.job_id}/{rid}",
                    },
                )
            )

    def on_release_exit(
        self,
        conn: Any,
        rt: Any,
        key: str,
        outcome: AttemptOutcome,
        msg: dict[str, Any],
        now: float,
    ) -> None:
        try:
            job_pk = int(key[1:].split("-")[0])
        except ValueError:
            return
        row = self._prep_rows(conn, {job_pk}, {rt.pk}).get((job_pk, rt.pk))
        if row is None or row.release_state != "running":
            return
        decision = decide(
            outcome,
            retry_count=0,
            max_task_retry_count=0,
            exit_conditions=None,
            task_failure_mode="noaction",
        )
        info = {**(row.release_info or {}), **completed_info(decision, msg, now)}
        conn.execute(
            update(job_nodes)
            .where(job_nodes.c.job_pk == job_pk, job_nodes.c.node_pk == rt.pk)
            .values(release_state="completed", release_info=info)
        )
        lifecycle.finish_job_if_done(conn, job_pk, now)

    # -- node events -----------------------------------------------------------------------

    def forget_node_jobs(self, conn: Any, node_pk: int, *, reimage: bool, now: float) -> None:
        """A node rebooted, was reimaged or left: forget (or rerun) its per-job state."""
        if reimage:
            affected = [
                r[0]
                for r in conn.execute(
                    select(job_nodes.c.job_pk).where(job_nodes.c.node_pk == node_pk)
                ).all()
            ]
            conn.execute(delete(job_nodes).where(job_nodes.c.node_pk == node_pk))
            for job_pk in affected:
                lifecycle.finish_job_if_done(conn, job_pk, now)
        else:
            conn.execute(
                update(job_nodes)
                .where(and_(job_nodes.c.node_pk == node_pk, job_nodes.c.prep_state == "running"))
                .values(prep_state=None)
            )
