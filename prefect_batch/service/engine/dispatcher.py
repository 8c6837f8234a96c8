"""Dispatch: fill a pool's free slots from the head of its queue and build the run requests.

:class:`Dispatcher` is a part of :class:`~prefect_batch.service.engine.Engine`. The queue's head
is read through its ordering index; placement is the pure ``core.scheduler.assign``. A task of a
job with a preparation task waits on its node until that node's preparation succeeded (see
``jobtasks.py``). A multi-instance task placed on several nodes is handed to ``gangs.py``, which
runs its coordination commands first. Statements on this path are built once at import:
building SQLAlchemy expressions costs more than running them.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from sqlalchemy import Text, bindparam, cast, delete, select, update

from prefect_batch.core.commandline import split_command_line
from prefect_batch.core.scheduler import NodeSlots, QueuedTask, assign
from prefect_batch.core.sharedkey import decode_key, derive_job_key, job_scoped_name
from prefect_batch.core.states import NodeFillType, PoolState, TaskState
from prefect_batch.providers.storage import ObjectStorage, StagingError
from prefect_batch.service.engine.confinement import elevation_refusal, run_confinement
from prefect_batch.service.engine.gangs import instances_of
from prefect_batch.service.rows import lifecycle
from prefect_batch.service.rows.common import iso
from prefect_batch.service.rows.sealing import unseal_environment
from prefect_batch.service.rows.statewrites import task_edge
from prefect_batch.store.schema import accounts, jobs, nodes, queue, tasks

if TYPE_CHECKING:
    from prefect_batch.service.engine.gangs import Gangs
    from prefect_batch.service.engine.jobtasks import JobTasks

__all__ = ["SPREAD_GRACE_SECONDS", "Dispatcher", "base_environment", "stage_request"]

log = logging.getLogger(__name__)

_URL_ONLY = ObjectStorage()
"""Without configured storage, plain http(s) URLs still work (nothing is signed)."""

STAGE_THREADS = 8
"""How many run requests' files the engine resolves at once (storage round trips overlap)."""

SPREAD_GRACE_SECONDS = 2.0
"""How long a spread pool waits for nodes that are still starting before it fills the others."""

PREPARING = lifecycle.PREPARING
MAX_ATTEMPTS_KEPT = 100
"""Per task, how many attempts' nodes are remembered (the most recent)."""

_QUEUE_HEAD = (
    select(queue.c.task_pk, queue.c.job_pk, queue.c.slots)
    .where(queue.c.pool_key == bindparam("b_pool"))
    .order_by(queue.c.neg_priority, queue.c.job_pk, queue.c.task_pk)
    .limit(bindparam("b_limit"))
)
_QUEUE_HEAD_EXCLUDING = (
    select(queue.c.task_pk, queue.c.job_pk, queue.c.slots)
    .where(
        queue.c.pool_key == bindparam("b_pool"),
        queue.c.job_pk.not_in(bindparam("b_excluded", expanding=True)),
    )
    .order_by(queue.c.neg_priority, queue.c.job_pk, queue.c.task_pk)
    .limit(bindparam("b_limit"))
)
_JOBS_OF_HEAD = select(jobs.c.pk, jobs.c.max_parallel_tasks, jobs.c.n_running, jobs.c.spec).where(
    jobs.c.pk.in_(bindparam("pks", expanding=True))
)
_DEQUEUE = delete(queue).where(queue.c.task_pk.in_(bindparam("pks", expanding=True)))
_MARK_PREPARING = task_edge((TaskState.ACTIVE,), TaskState.PREPARING).statement(
    tasks.c.pk == bindparam("b_pk"),
    previous_state=tasks.c.state,
    previous_state_transition_time=tasks.c.state_transition_time,
    state_transition_time=bindparam("b_now"),
    last_modified=bindparam("b_now"),
    version=tasks.c.version + 1,
    node_pk=bindparam("b_node"),
    attempt=bindparam("b_attempt"),
    node_history=bindparam("b_hist"),
    node_info=None,
)
"""Dispatch: the task is preparing on its node, with this attempt recorded in its history
(one statement per task; ``b_attempt`` is the attempt read just before, plus one)."""
_RUN_ROWS = (
    select(
        tasks.c.pk,
        tasks.c.id,
        tasks.c.attempt,
        tasks.c.spec,
        tasks.c.kind,
        tasks.c.wall_clock_seconds,
        tasks.c.node_pk,
        tasks.c.node_history,
        tasks.c.requeue_count,
        jobs.c.pk.label("job_pk"),
        jobs.c.id.label("job_id"),
    )
    .join(jobs, jobs.c.pk == tasks.c.job_pk)
    .where(tasks.c.pk.in_(bindparam("pks", expanding=True)))
)


_SPEC_TEXT = select(tasks.c.pk, cast(tasks.c.spec, Text)).where(
    tasks.c.pk.in_(bindparam("pks", expanding=True))
)


class _RunRow:
    """A task being dispatched: its row as read (``_RUN_ROWS``), with the node and attempt it
    gets now and its job's spec (read once per job, not once per task)."""

    __slots__ = (
        "attempt",
        "id",
        "job_id",
        "job_pk",
        "job_spec",
        "kind",
        "node_history",
        "node_pk",
        "pk",
        "requeue_count",
        "spec",
        "wall_clock_seconds",
    )

    def __init__(self, row: Any, node_pk: int, attempt: int, job_spec: Any) -> None:
        (
            self.pk,
            self.id,
            _,
            self.spec,
            self.kind,
            self.wall_clock_seconds,
            _,
            self.node_history,
            self.requeue_count,
            self.job_pk,
            self.job_id,
        ) = row
        self.node_pk = node_pk
        self.attempt = attempt
        self.job_spec = job_spec


NODE_RUNNING = (
    update(nodes)
    .where(nodes.c.pk == bindparam("b_pk"))
    .values(
        running_tasks=nodes.c.running_tasks + bindparam("b_tasks"),
        running_slots=nodes.c.running_slots + bindparam("b_slots"),
    )
)


def base_environment(
    account: str, base_url: str, pool_id: str, node_id: str, *, dedicated: bool = True
) -> dict[str, str]:
    """The ``AZ_BATCH_*`` variables every task on a node gets (the agent adds the paths)."""
    return {
        "AZ_BATCH_ACCOUNT_NAME": account,
        "AZ_BATCH_ACCOUNT_URL": base_url,
        "AZ_BATCH_POOL_ID": pool_id,
        "AZ_BATCH_NODE_ID": node_id,
        "AZ_BATCH_NODE_IS_DEDICATED": "true" if dedicated else "false",
    }


def stage_request(spec: dict[str, Any], account: str) -> dict[str, Any]:
    """The ``stage`` field of a run request whose task names resource or output files.

    The engine resolves it into the agent's ``downloads``/``uploads`` (presigned URLs) after the
    dispatching transaction commits, so no storage request is made while the store is locked.
    ``account`` decides which buckets may be signed for it (``storage_bucket_access``).
    """
    files: dict[str, Any] = {k: spec[k] for k in ("resourceFiles", "outputFiles") if spec.get(k)}
    return {"stage": {**files, "account": account}} if files else {}


def completed_info(decision: Any, msg: dict[str, Any], now: float) -> dict[str, Any]:
    """Wire fields of a start, preparation or release task that ended (``core.completion``)."""
    return {
        "state": "completed",
        "endTime": iso(msg.get("end_time") or now),
        "exitCode": decision.exit_code,
        "result": decision.result.value if decision.result else None,
        "failureInfo": decision.failure_info,
    }


def settings_env(*lists: Any) -> dict[str, str]:
    """Merge ``environmentSettings`` lists (later lists win)."""
    env: dict[str, str] = {}
    for items in lists:
        for e in items or []:
            env[e["name"]] = e.get("value") or ""
    return env


class Dispatcher:
    """Fills free slots of the engine's leased pools and builds the run requests.

    Args:
        nodes: The engine's node runtimes by node pk (their free slots are changed here).
        pool_of: The engine's leased pool by pool pk, or None.
        job_tasks: Job preparation, which a task of a job with one waits for on its node.
        gangs: Runs the multi-instance tasks placed here.
        update_busy: Records the nodes that turned busy or idle (the node runtime's).
        account_urls: Base URL per account, for ``AZ_BATCH_ACCOUNT_URL``.
        job_manager_env: What a job manager task needs to reach this service.
        scoped_job_credentials: Whether a job manager gets a key for its job only.
        storage: The object storage resource and output file URLs are signed for.
        storage_bucket_access: Which buckets each account's tasks may use; None: every one.
        transfer_timeout_seconds: The limit of one staging transfer.
    """

    def __init__(
        self,
        nodes: Mapping[int, Any],
        pool_of: Callable[[int], Any],
        job_tasks: JobTasks,
        update_busy: Callable[[Any, float], None],
        gangs: Gangs,
        *,
        account_urls: Mapping[str, str],
        job_manager_env: Mapping[str, str],
        scoped_job_credentials: bool,
        storage: ObjectStorage | None,
        storage_bucket_access: Mapping[str, list[str]] | None,
        transfer_timeout_seconds: float,
    ) -> None:
        self._nodes = nodes
        self._pool_of = pool_of
        self.job_tasks = job_tasks
        self.gangs = gangs
        self._update_busy = update_busy
        self.account_urls = account_urls
        self.job_manager_env = job_manager_env
        self.scoped_job_credentials = scoped_job_credentials
        self.storage = storage
        self.storage_bucket_access = storage_bucket_access
        self.transfer_timeout_seconds = transfer_timeout_seconds
        self._stage_pool: Any = None

    def dispatch(self, conn: Any, now: float, sends: dict[int, list[dict[str, Any]]]) -> None:
        """Fill the free slots of every leased pool (in the engine step's transaction)."""
        by_pool: dict[int, list[Any]] = defaultdict(list)
        starting: set[int] = set()
        accepting: dict[int, int] = defaultdict(int)
        for rt in self._nodes.values():
            if rt.accepting:
                accepting[rt.pool_pk] += 1
            if rt.accepting and rt.free_slots > 0:
                by_pool[rt.pool_pk].append(rt)
            elif (
                not rt.ready
                and rt.connection is not None
                and now - rt.connect_time < SPREAD_GRACE_SECONDS
            ):
                starting.add(rt.pool_pk)
        for pool_pk, rts in by_pool.items():
            pool = self._pool_of(pool_pk)
            if pool is None or pool.state != PoolState.ACTIVE.value:
                continue
            if pool_pk in starting and pool.fill_type == NodeFillType.SPREAD.value:
                continue  # let the other nodes join first, or "spread" would pack the first one
            self._dispatch_pool(conn, pool, rts, now, sends, accepting[pool_pk])

    def _dispatch_pool(
        self,
        conn: Any,
        pool: Any,
        rts: list[Any],
        now: float,
        sends: dict[int, list[dict[str, Any]]],
        accepting: int,
    ) -> None:
        free = sum(rt.free_slots for rt in rts)
        key = lifecycle.pool_key(pool.account, pool.id)
        limit = max(free * 2, 8)
        # Jobs whose preparation failed on every node that has room now are skipped, or their
        # queued tasks would hold the head of the queue while other jobs' tasks wait.
        free_nodes = {rt.pk for rt in rts}
        excluded = [
            job_pk
            for job_pk, failed in self.job_tasks.prep_failures.items()
            if free_nodes <= failed
        ]
        if excluded:
            head = conn.execute(
                _QUEUE_HEAD_EXCLUDING, {"b_pool": key, "b_limit": limit, "b_excluded": excluded}
            ).all()
        else:
            head = conn.execute(_QUEUE_HEAD, {"b_pool": key, "b_limit": limit}).all()
        if not head:
            return
        job_rows = {
            r.pk: r
            for r in conn.execute(_JOBS_OF_HEAD, {"pks": list({r.job_pk for r in head})}).all()
        }
        limits = {pk: r for pk, r in job_rows.items() if r.max_parallel_tasks > 0}
        by_key = {str(rt.pk): rt for rt in rts}
        affinity, instances = _head_hints(conn, pool.id, head, rts)
        placed = assign(
            [
                QueuedTask(
                    key=r.task_pk,
                    job_key=r.job_pk,
                    required_slots=r.slots,
                    node_affinity=affinity.get(r.task_pk),
                    instances=instances.get(r.task_pk, 1),
                )
                for r in head
            ],
            [
                NodeSlots(node_key=str(rt.pk), free_slots=rt.free_slots, total_slots=rt.total_slots)
                for rt in rts
            ],
            NodeFillType(pool.fill_type),
            job_running={j: r.n_running for j, r in limits.items()},
            job_max_parallel={j: r.max_parallel_tasks for j, r in limits.items()},
            gang_capacity=accepting,
        )
        # A gang is one pair per node (primary first): the task goes to its primary and the
        # other nodes are handed to the gang part below.
        gangs: dict[int, list[Any]] = {}
        if instances:
            primaries: list[tuple[int, str]] = []
            for pk, node in placed:
                if pk in instances:
                    gangs.setdefault(pk, [])
                    if not gangs[pk]:
                        primaries.append((pk, node))
                    gangs[pk].append(by_key[node])
                else:
                    primaries.append((pk, node))
            placed = primaries
        job_of = {r.task_pk: r.job_pk for r in head}
        slots_of = {r.task_pk: r.slots for r in head}
        if gangs:
            # A gang is not placed across a node where its job's preparation failed (it waits
            # for other nodes, like a task the filter below cannot move).
            for pk in [
                pk for pk, members in gangs.items() if self._prep_failed(job_of[pk], members)
            ]:
                del gangs[pk]
                placed = [(p, n) for p, n in placed if p != pk]
        ordinary = [(pk, node) for pk, node in placed if pk not in gangs]
        placed = [(pk, node) for pk, node in placed if pk in gangs] + (
            self.job_tasks.filter_prep_failed(
                conn, ordinary, job_of, job_rows, slots_of=slots_of, rts=rts, fill=pool.fill_type
            )
        )
        if not placed:
            return
        pks = [pk for pk, _ in placed]
        node_of = {pk: int(node) for pk, node in placed}
        # Read what the run requests need first (attempt and history as they are now), so the
        # state, the node, the new attempt and its history entry go in one write per task.
        rows = [
            _RunRow(r, node_of[r.pk], r.attempt + 1, job_rows[r.job_pk].spec)
            for r in conn.execute(_RUN_ROWS, {"pks": pks}).all()
        ]
        conn.execute(_DEQUEUE, {"pks": pks})
        _MARK_PREPARING.execute(
            conn,
            [
                {
                    "b_pk": r.pk,
                    "b_node": r.node_pk,
                    "b_now": now,
                    "b_attempt": r.attempt,
                    # Which node ran which attempt, so a client can spot a bad node.
                    "b_hist": (
                        list(r.node_history or [])
                        + [
                            {
                                "attempt": r.attempt,
                                "poolId": pool.id,
                                "nodeId": self._nodes[r.node_pk].node_id,
                                "dispatchTime": now,
                            }
                        ]
                    )[-MAX_ATTEMPTS_KEPT:],
                }
                for r in rows
            ],
            expected=len(placed),
        )
        deltas: dict[int, lifecycle.JobDelta] = defaultdict(lifecycle.JobDelta)
        per_node: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for pk, node in placed:
            deltas[job_of[pk]].move("active", "running", slots_of[pk])
            rt = by_key[node]
            rt.free_slots -= slots_of[pk]
            per_node[rt.pk][0] += 1
            per_node[rt.pk][1] += slots_of[pk]
        for members in gangs.values():
            for rt in members[1:]:  # each subtask holds its whole node (one slot)
                rt.free_slots -= 1
                per_node[rt.pk][0] += 1
                per_node[rt.pk][1] += 1
        lifecycle.write_job_deltas(conn, deltas, now)
        conn.execute(
            NODE_RUNNING,
            [{"b_pk": pk, "b_tasks": n, "b_slots": sl} for pk, (n, sl) in per_node.items()],
        )
        base_url = self.account_urls.get(pool.account, "embedded://local")
        for r in rows:
            rt = self._nodes[r.node_pk]
            message = self._run_message(r, pool, rt, base_url, conn)
            if r.pk in gangs:
                self.gangs.start(
                    conn,
                    r,
                    gangs[r.pk],
                    message,
                    now,
                    lambda node, run, r=r: self.job_tasks.send_after_prep(
                        conn, r, pool, node, run, now, sends
                    ),
                )
            else:
                self.job_tasks.send_after_prep(conn, r, pool, rt, message, now, sends)
        self._update_busy(conn, now)

    def _prep_failed(self, job_pk: int, members: list[Any]) -> bool:
        failed = self.job_tasks.prep_failures.get(job_pk)
        return bool(failed) and any(rt.pk in failed for rt in members)

    def _job_manager_credentials(
        self, conn: Any, account: str, job_id: str, base_url: str
    ) -> dict[str, str]:
        """What a job manager needs to reach the service with the Python client.

        Behind a server: the server's URL and a key good for this job only (derived from the
        account's primary key; see ``core/sharedkey.py``). Embedded: the store itself (there is no
        authentication boundary on one machine's SQLite file).
        """
        env = {"PREFECT_BATCH_ENGINE": "false"}
        if not self.scoped_job_credentials:
            env.update(self.job_manager_env)
            env["PREFECT_BATCH_ACCOUNT_NAME"] = account
            return env
        primary = conn.execute(select(accounts.c.key1).where(accounts.c.name == account)).scalar()
        if primary is None:
            return env
        key = derive_job_key(decode_key(primary), job_id)
        env.update(
            PREFECT_BATCH_SERVICE_URL=base_url,
            PREFECT_BATCH_ACCOUNT_NAME=job_scoped_name(account, job_id),
            PREFECT_BATCH_ACCOUNT_KEY=base64.b64encode(key).decode("ascii"),
        )
        return env

    def _run_message(self, r: Any, pool: Any, rt: Any, base_url: str, conn: Any) -> dict[str, Any]:
        job_spec = r.job_spec or {}
        env = settings_env(
            job_spec.get("commonEnvironmentSettings"), r.spec.get("environmentSettings")
        )
        env = unseal_environment(conn, env)
        unreachable = None
        if r.kind == "jobmanager":
            # The job manager may add tasks through the Python client from its node.
            env.update(self._job_manager_credentials(conn, pool.account, r.job_id, base_url))
            unreachable = self._store_unreachable_from(rt)
        env.update(
            base_environment(pool.account, base_url, pool.id, rt.node_id, dedicated=rt.dedicated)
        )
        env["AZ_BATCH_JOB_ID"] = r.job_id
        env["AZ_BATCH_TASK_ID"] = r.id
        prep = job_spec.get("jobPreparationTask")
        return {
            "op": "run",
            "key": f"t{r.pk}-{r.attempt}",
            "argv": split_command_line(r.spec["commandLine"]),
            "dir": f"{r.job_id}/{r.id}",
            "env": env,
            "wall_clock_seconds": r.wall_clock_seconds,
            "job_prep_dir": f"{r.job_id}/{prep.get('id') or 'jobpreparation'}" if prep else None,
            "certs": "task",  # the node's certificates visible to tasks (AZ_BATCH_CERTIFICATES_DIR)
            **stage_request(r.spec, pool.account),
            **({"stage_error": unreachable} if unreachable else {}),
            # An embedded job manager is handed the store itself: it cannot be kept from it.
            **run_confinement(
                r.spec, unconfined=r.kind == "jobmanager" and not self.scoped_job_credentials
            ),
            **elevation_refusal(r.spec, rt.agent_uid),
        }

    def _store_unreachable_from(self, rt: Any) -> dict[str, Any] | None:
        """Why a job manager on this node could not reach the service, or None.

        Embedded, a job manager gets the store's URL; a node on another machine cannot open
        this machine's SQLite file. Behind a server it gets the server's URL instead, which
        other machines can reach.
        """
        if rt.traits.same_machine or self.scoped_job_credentials:
            return None
        if not self.job_manager_env.get("PREFECT_BATCH_DATABASE_URL", "").startswith("sqlite"):
            return None
        return {
            "code": "JobManagerNeedsServer",
            "message": "A job manager on another machine reaches the service through a batch "
            "server (prefect-batch server start) or a shared PostgreSQL store; this service's "
            "SQLite file is on this machine",
            "category": "usererror",
            "values": {"NodeId": rt.node_id},
        }

    def close(self) -> None:
        """Stop the staging threads (the engine stopped)."""
        if self._stage_pool is not None:
            self._stage_pool.shutdown(wait=False)
            self._stage_pool = None

    def stage_sends(self, sends: dict[int, list[dict[str, Any]]]) -> None:
        """Turn the ``stage`` of run requests into URLs the agent fetches and uploads to.

        Presigning is local work; listing a container is a storage request (cached a few
        seconds per prefix, so the tasks of a job that read one prefix list it once). The run
        requests of one step are resolved on up to ``STAGE_THREADS`` threads at once, so a step
        waits about one storage round trip however many tasks it dispatched. A file that cannot
        be resolved becomes the run's ``stage_error``: the agent records the task as ended by
        that pre-processing error, through the usual completion path.
        """
        staged = [msg for msgs in sends.values() for msg in msgs if "stage" in msg]
        if len(staged) == 1:
            self._stage_one(staged[0])
        elif staged:
            if self._stage_pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._stage_pool = ThreadPoolExecutor(STAGE_THREADS, thread_name_prefix="stage")
            list(self._stage_pool.map(self._stage_one, staged))

    def _stage_one(self, msg: dict[str, Any]) -> None:
        stage = msg.pop("stage")
        msg["transfer_timeout_seconds"] = self.transfer_timeout_seconds
        try:
            storage = self._storage_for(stage)
            self._check_buckets(storage, stage)
            if stage.get("resourceFiles"):
                msg["downloads"] = storage.downloads(stage["resourceFiles"])
            if stage.get("outputFiles"):
                msg["uploads"] = storage.uploads(stage["outputFiles"])
        except StagingError as exc:
            msg.pop("downloads", None)
            msg.pop("uploads", None)
            msg["stage_error"] = exc.to_wire()
        except Exception as exc:  # noqa: BLE001 - e.g. no credentials: the task fails
            log.warning("could not resolve the files of %s", msg.get("key"), exc_info=True)
            msg.pop("downloads", None)
            msg.pop("uploads", None)
            msg["stage_error"] = StagingError(
                "BlobDownloadMiscError",
                f"the service could not sign the task's file URLs: {exc}",
                "servererror",
            ).to_wire()

    def _check_buckets(self, storage: ObjectStorage, stage: dict[str, Any]) -> None:
        """Refuse a bucket the task's account may not use (when access is configured)."""
        access = self.storage_bucket_access
        if access is None:
            return
        allowed = access.get(stage["account"], [])
        for item in stage.get("resourceFiles") or ():
            url = item.get("storageContainerUrl")
            bucket = item.get("autoStorageContainerName")
            if url:
                found = storage.container_of(url)
                bucket = found[0] if found else None
            if bucket and not any(fnmatch.fnmatchcase(bucket, p) for p in allowed):
                raise StagingError(
                    "BlobAccessDenied",
                    f"The account may not read the bucket {bucket!r}",
                    ContainerUrl=url or bucket,
                )
        for item in stage.get("outputFiles") or ():
            url = item["destination"]["container"]["containerUrl"]
            found = storage.container_of(url)
            if found and not any(fnmatch.fnmatchcase(found[0], p) for p in allowed):
                raise StagingError(
                    "BlobAccessDenied",
                    f"The account may not write to the bucket {found[0]!r}",
                    ContainerUrl=url,
                )

    def _storage_for(self, stage: dict[str, Any]) -> ObjectStorage:
        if self.storage is not None:
            return self.storage
        needs_storage = any(
            f.get("storageContainerUrl") or f.get("autoStorageContainerName")
            for f in stage.get("resourceFiles") or ()
        ) or any(
            (o["destination"]["container"]["containerUrl"] or "").startswith("s3://")
            for o in stage.get("outputFiles") or ()
        )
        if needs_storage:
            raise StagingError(
                "AutoStorageAccountNotConfigured",
                "No storage is configured for this service: set PREFECT_BATCH_STORAGE_* or "
                "give the client an S3Bucket/AwsCredentials block",
            )
        return _URL_ONLY


def _head_hints(
    conn: Any, pool_id: str, head: list[Any], rts: list[Any]
) -> tuple[dict[int, str], dict[int, int]]:
    """What the head tasks' specs tell the scheduler: affinity and instances.

    Affinity: the node (``str(node pk)``) each head task's ``affinityInfo.affinityId`` names,
    where it names a node of this pool that could take tasks now (``<poolId>/<nodeId>``, as
    nodes and tasks show it). The hint is soft: the scheduler uses it when that node has room.
    Instances: ``numberOfInstances`` of the multi-instance tasks among them.

    The specs are read as text and parsed only where one of the two appears: the head is up
    to twice the free slots long, and most tasks carry neither.
    """
    node_of = {f"{pool_id}/{rt.node_id}".casefold(): str(rt.pk) for rt in rts}
    rows = conn.execute(_SPEC_TEXT, {"pks": [r.task_pk for r in head]}).all()
    out: dict[int, str] = {}
    instances: dict[int, int] = {}
    for pk, text in rows:
        if not text or ('"affinityInfo"' not in text and '"multiInstanceSettings"' not in text):
            continue
        spec = json.loads(text) or {}
        wanted = (spec.get("affinityInfo") or {}).get("affinityId")
        node = node_of.get(str(wanted).casefold()) if wanted else None
        if node is not None:
            out[pk] = node
        if spec.get("multiInstanceSettings"):
            instances[pk] = instances_of(spec)
    return out, instances
