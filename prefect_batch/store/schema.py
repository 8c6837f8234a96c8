"""Tables of the batch store (SQLAlchemy Core).

Hot columns (state, counters, sort keys) are real columns with indexes; the rest of a resource's
specification is kept as its Azure wire JSON in ``spec``. The ``queue`` table holds exactly the
tasks that may be dispatched now, ordered by ``(neg_priority, job_pk, task_pk)`` — the ordering
key ``(-job.priority, job.creation_time, task.creation_time)`` with insertion order standing in
for creation time — so the scheduler reads the head of the queue through an index instead of
scanning every task.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "SCHEMA_VERSION",
    "account_quotas",
    "accounts",
    "autoscale_runs",
    "certificates",
    "client_requests",
    "deps",
    "job_nodes",
    "job_schedules",
    "jobs",
    "metadata",
    "node_certificates",
    "node_commands",
    "node_sources",
    "nodes",
    "pool_samples",
    "pools",
    "provider_records",
    "queue",
    "schema_info",
    "sealing_keys",
    "subtasks",
    "tasks",
]

SCHEMA_VERSION = 5
"""Bumped whenever an existing table changes (a new table is created in an existing store as it
opens); a store written by another version is refused."""

metadata = MetaData()

# Ids of our own rows use BigInteger on PostgreSQL and INTEGER (rowid alias) on SQLite.
PK = BigInteger().with_variant(Integer(), "sqlite")

accounts = Table(
    "accounts",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("key1", Text, nullable=False),
    Column("key2", Text, nullable=False),
    Column("creation_time", Float, nullable=False),
)

# An account's node quotas (Azure's dedicated and low-priority core quotas, counted in nodes);
# no row: the defaults. A table of its own so that adding it leaves older stores readable.
account_quotas = Table(
    "account_quotas",
    metadata,
    Column("account", String(64), primary_key=True),
    Column("dedicated_nodes", Integer, nullable=False),
    Column("low_priority_nodes", Integer, nullable=False),
)

pools = Table(
    "pools",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("account", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("id_key", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("state_transition_time", Float, nullable=False),
    Column("allocation_state", String(16), nullable=False),
    Column("allocation_state_transition_time", Float, nullable=False),
    Column("creation_time", Float, nullable=False),
    Column("last_modified", Float, nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Column("vm_size", String(64), nullable=False),
    Column("target_dedicated", Integer, nullable=False, default=0),
    Column("target_low_priority", Integer, nullable=False, default=0),
    Column("task_slots_per_node", Integer, nullable=False, default=1),
    Column("fill_type", String(16), nullable=False, default="spread"),
    Column("deallocation_option", String(16), nullable=False, default="requeue"),
    Column("resize_timeout_seconds", Float, nullable=False, default=900.0),
    Column("resize_errors", JSON, nullable=True),
    Column("spec", JSON, nullable=False),
    Column("lease_owner", String(64), nullable=True),
    Column("lease_expires", Float, nullable=True),
    # Autoscale (the formula and interval are in ``spec``): when the engine holding the lease
    # evaluates the formula next, and the last periodic evaluation (wire ``AutoScaleRun``).
    Column("auto_scale_next", Float, nullable=True),
    Column("auto_scale_run", JSON, nullable=True),
    UniqueConstraint("account", "id_key", name="uq_pools_account_id"),
    sqlite_autoincrement=True,  # never reuse the id of a deleted row
)

nodes = Table(
    "nodes",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("node_id", String(64), nullable=False, unique=True),
    Column("pool_pk", PK, ForeignKey("pools.pk", ondelete="CASCADE"), nullable=False),
    Column("account", String(64), nullable=False),
    Column("state", String(24), nullable=False),
    Column("state_transition_time", Float, nullable=False),
    Column("scheduling_state", String(16), nullable=False, default="enabled"),
    Column("allocation_time", Float, nullable=False),
    Column("last_boot_time", Float, nullable=True),
    Column("ip_address", String(64), nullable=True),
    Column("vm_size", String(64), nullable=False),
    Column("root_dir", Text, nullable=False),
    Column("total_slots", Integer, nullable=False),
    Column("running_tasks", Integer, nullable=False, default=0),
    Column("running_slots", Integer, nullable=False, default=0),
    Column("total_tasks_run", Integer, nullable=False, default=0),
    Column("total_tasks_succeeded", Integer, nullable=False, default=0),
    Column("errors", JSON, nullable=True),
    Column("agent_info", JSON, nullable=True),
    Column("last_heartbeat", Float, nullable=True),
    # The agent's latest metrics reading (/proc), taken with each autoscale sample.
    Column("metrics", JSON, nullable=True),
    Column("leaving", Boolean, nullable=False, default=False),
    # A requested node operation (reboot, reimage, remove) and its deallocation option; the
    # engine carries it out once the option's condition holds.
    Column("pending_op", String(16), nullable=True),
    Column("pending_option", String(16), nullable=True),
    Column("boot_id", Integer, nullable=False, default=0),
    Column("start_task_info", JSON, nullable=True),
    # The SSH host (``user@address:port``) a node of an SSH host group runs on; NULL for local
    # nodes. One node per host in an account: two engines can never take the same host.
    Column("host_id", String(330), nullable=True),
    # False for a low-priority (spot) node.
    Column("dedicated", Boolean, nullable=False, default=True),
    Index("ix_nodes_pool", "pool_pk"),
    UniqueConstraint("account", "host_id", name="uq_nodes_account_host"),
    sqlite_autoincrement=True,  # never reuse the id of a deleted row
)

jobs = Table(
    "jobs",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("account", String(64), nullable=False),
    # Longer than the 64 characters of an id: a schedule's jobs are "<scheduleId>:job-<n>".
    Column("id", String(96), nullable=False),
    Column("id_key", String(96), nullable=False),
    Column("state", String(16), nullable=False),
    Column("state_transition_time", Float, nullable=False),
    Column("previous_state", String(16), nullable=True),
    Column("previous_state_transition_time", Float, nullable=True),
    Column("creation_time", Float, nullable=False),
    Column("last_modified", Float, nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Column("priority", Integer, nullable=False, default=0),
    Column("pool_id", String(64), nullable=True),
    Column("pool_key", String(140), nullable=True),
    Column("max_parallel_tasks", Integer, nullable=False, default=-1),
    Column("max_task_retry_count", Integer, nullable=False, default=0),
    Column("deadline", Float, nullable=True),
    Column("on_all_tasks_complete", String(16), nullable=False, default="noaction"),
    Column("on_task_failure", String(32), nullable=False, default="noaction"),
    Column("uses_task_dependencies", Boolean, nullable=False, default=False),
    Column("disable_option", String(16), nullable=True),
    Column("terminate_reason", Text, nullable=True),
    Column("start_time", Float, nullable=False),
    Column("end_time", Float, nullable=True),
    Column("spec", JSON, nullable=False),
    Column("n_active", Integer, nullable=False, default=0),
    Column("n_running", Integer, nullable=False, default=0),
    Column("n_succeeded", Integer, nullable=False, default=0),
    Column("n_failed", Integer, nullable=False, default=0),
    Column("s_active", Integer, nullable=False, default=0),
    Column("s_running", Integer, nullable=False, default=0),
    Column("s_succeeded", Integer, nullable=False, default=0),
    Column("s_failed", Integer, nullable=False, default=0),
    Column("n_retries", Integer, nullable=False, default=0),
    # Why the job could not start (wire ``JobSchedulingError``): its auto pool was not created.
    Column("scheduling_error", JSON, nullable=True),
    UniqueConstraint("account", "id_key", name="uq_jobs_account_id"),
    Index("ix_jobs_state_deadline", "state", "deadline"),
    sqlite_autoincrement=True,  # never reuse the id of a deleted row
)

job_schedules = Table(
    "job_schedules",
    metadata,
    # A schedule's jobs are the jobs whose id is "<id>:job-<n>" (":" is never in an id a user
    # gives); ``job_count`` is the n of the latest, ``last_run_time`` when that run was due.
    # ``next_run_time`` is the pending run (NULL: none left); creating a job changes only these
    # columns, never ``version``/``last_modified`` (Azure: they track the schedule's own data).
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("account", String(64), nullable=False),
    Column("id", String(64), nullable=False),
    Column("id_key", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("state_transition_time", Float, nullable=False),
    Column("previous_state", String(16), nullable=True),
    Column("previous_state_transition_time", Float, nullable=True),
    Column("creation_time", Float, nullable=False),
    Column("last_modified", Float, nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Column("spec", JSON, nullable=False),
    Column("next_run_time", Float, nullable=True),
    Column("job_count", Integer, nullable=False, default=0),
    Column("last_run_time", Float, nullable=True),
    Column("end_time", Float, nullable=True),
    # The pool of ``poolLifetimeOption: jobschedule``, shared by the schedule's jobs.
    Column("auto_pool_id", String(64), nullable=True),
    UniqueConstraint("account", "id_key", name="uq_job_schedules_account_id"),
    Index("ix_job_schedules_state_next", "state", "next_run_time"),
    sqlite_autoincrement=True,  # never reuse the id of a deleted row
)

tasks = Table(
    "tasks",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("job_pk", PK, ForeignKey("jobs.pk", ondelete="CASCADE"), nullable=False),
    Column("id", String(64), nullable=False),
    Column("id_key", String(64), nullable=False),
    Column("int_id", BigInteger, nullable=True),
    Column("state", String(16), nullable=False),
    Column("state_transition_time", Float, nullable=False),
    Column("previous_state", String(16), nullable=True),
    Column("previous_state_transition_time", Float, nullable=True),
    Column("creation_time", Float, nullable=False),
    Column("last_modified", Float, nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Column("spec", JSON, nullable=False),
    Column("required_slots", Integer, nullable=False, default=1),
    Column("max_retries", Integer, nullable=False, default=0),
    Column("wall_clock_seconds", Float, nullable=True),
    Column("retention_seconds", Float, nullable=False),
    Column("pending_parents", Integer, nullable=False, default=0),
    Column("blocked", Boolean, nullable=False, default=False),
    Column("node_pk", PK, nullable=True),
    Column("attempt", Integer, nullable=False, default=0),
    Column("start_time", Float, nullable=True),
    Column("end_time", Float, nullable=True),
    Column("exit_code", BigInteger, nullable=True),
    Column("result", String(16), nullable=True),
    Column("failure_info", JSON, nullable=True),
    Column("retry_count", Integer, nullable=False, default=0),
    Column("requeue_count", Integer, nullable=False, default=0),
    Column("last_retry_time", Float, nullable=True),
    Column("last_requeue_time", Float, nullable=True),
    Column("node_info", JSON, nullable=True),
    Column("dependency_action", String(16), nullable=True),
    Column("kill_reason", String(32), nullable=True),
    Column("files_node_pk", PK, nullable=True),
    Column("retention_deadline", Float, nullable=True),
    Column("kind", String(16), nullable=False, default="task"),
    Column("node_history", JSON, nullable=True),
    UniqueConstraint("job_pk", "id_key", name="uq_tasks_job_id"),
    Index("ix_tasks_job_state", "job_pk", "state"),
    Index("ix_tasks_job_int", "job_pk", "int_id"),
    Index("ix_tasks_node", "node_pk"),
    Index("ix_tasks_kill", "kill_reason"),
    Index("ix_tasks_retention", "retention_deadline"),
    sqlite_autoincrement=True,  # never reuse the id of a deleted row
)

subtasks = Table(
    "subtasks",
    metadata,
    # Per instance of a multi-instance task's current attempt: 0 is the primary, 1.. the
    # subtasks (what subtasksinfo lists). Rewritten when the task is dispatched again.
    Column("task_pk", PK, ForeignKey("tasks.pk", ondelete="CASCADE"), primary_key=True),
    Column("idx", Integer, primary_key=True),
    Column("attempt", Integer, nullable=False),
    Column("node_pk", PK, nullable=False),
    Column("node_id", String(64), nullable=False),
    Column("pool_id", String(64), nullable=False),
    Column("address", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("state_transition_time", Float, nullable=False),
    Column("previous_state", String(16), nullable=True),
    Column("previous_state_transition_time", Float, nullable=True),
    Column("start_time", Float, nullable=True),
    Column("end_time", Float, nullable=True),
    Column("exit_code", BigInteger, nullable=True),
    Column("result", String(16), nullable=True),
    Column("failure_info", JSON, nullable=True),
    Index("ix_subtasks_node", "node_pk"),
)

queue = Table(
    "queue",
    metadata,
    Column("task_pk", PK, ForeignKey("tasks.pk", ondelete="CASCADE"), primary_key=True),
    Column("pool_key", String(140), nullable=False),
    Column("neg_priority", Integer, nullable=False),
    Column("job_pk", PK, nullable=False),
    Column("slots", Integer, nullable=False, default=1),
    Index("ix_queue_order", "pool_key", "neg_priority", "job_pk", "task_pk"),
    Index("ix_queue_job", "job_pk"),
)

deps = Table(
    "deps",
    metadata,
    Column("child_pk", PK, ForeignKey("tasks.pk", ondelete="CASCADE"), nullable=False),
    Column("parent_pk", PK, nullable=False),
    Index("ix_deps_parent", "parent_pk"),
    Index("ix_deps_child", "child_pk"),
)

node_commands = Table(
    "node_commands",
    metadata,
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("node_pk", PK, nullable=False),
    Column("op", JSON, nullable=False),
    Column("creation_time", Float, nullable=False),
    Index("ix_node_commands_node", "node_pk"),
    sqlite_autoincrement=True,  # never reuse the id of a deleted row
)

job_nodes = Table(
    "job_nodes",
    metadata,
    # Per (job, node): the job preparation and release tasks on that node.
    Column("job_pk", PK, ForeignKey("jobs.pk", ondelete="CASCADE"), primary_key=True),
    Column("node_pk", PK, primary_key=True),
    Column("node_id", String(64), nullable=False),
    Column("pool_id", String(64), nullable=False),
    Column("prep_state", String(16), nullable=True),
    Column("prep_info", JSON, nullable=True),
    Column("prep_boot", Integer, nullable=True),
    Column("release_state", String(16), nullable=True),
    Column("release_info", JSON, nullable=True),
    Index("ix_job_nodes_node", "node_pk"),
)

pool_samples = Table(
    "pool_samples",
    metadata,
    # One autoscale sample of a pool: the sampled service variables at ``time``, as
    # ``{"$ActiveTasks": 3.0, "$CPUPercent": 41.5, ...}`` (a metric nobody reported is absent).
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("pool_pk", PK, ForeignKey("pools.pk", ondelete="CASCADE"), nullable=False),
    Column("time", Float, nullable=False),
    Column("period", Float, nullable=False),  # the sample interval, seconds
    Column("sample", JSON, nullable=False),
    Index("ix_pool_samples_pool_time", "pool_pk", "time"),
)

autoscale_runs = Table(
    "autoscale_runs",
    metadata,
    # Every evaluation of a pool's formula, periodic or asked for (``evaluate``), newest kept.
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("pool_pk", PK, ForeignKey("pools.pk", ondelete="CASCADE"), nullable=False),
    Column("timestamp", Float, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("formula", Text, nullable=False),
    Column("results", Text, nullable=True),
    Column("error", JSON, nullable=True),
    Index("ix_autoscale_runs_pool", "pool_pk", "pk"),
    sqlite_autoincrement=True,  # never reuse the id of a deleted row
)

node_sources = Table(
    "node_sources",
    metadata,
    # Registered node sources of an account (SSH host groups), named by pools as
    # ``batch.node.ssh.<name>``. ``spec`` never holds key material: a key file path or the name
    # of a Prefect Secret block.
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("account", String(64), nullable=False),
    Column("name", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("spec", JSON, nullable=False),
    Column("creation_time", Float, nullable=False),
    Column("last_modified", Float, nullable=False),
    Column("version", Integer, nullable=False, default=1),
    UniqueConstraint("account", "name", name="uq_node_sources_account_name"),
    sqlite_autoincrement=True,  # never reuse the id of a deleted row
)

provider_records = Table(
    "provider_records",
    metadata,
    # What a node provider must keep across restarts of the service (launch requests, client
    # tokens), as key -> JSON, per account and node source (``nodeAgentSKUId``).
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("account", String(64), nullable=False),
    Column("sku", String(200), nullable=False),
    Column("key", String(300), nullable=False),
    Column("value", JSON, nullable=False),
    UniqueConstraint("account", "sku", "key", name="uq_provider_records_key"),
    sqlite_autoincrement=True,  # never reuse the id of a deleted row
)

client_requests = Table(
    "client_requests",
    metadata,
    # Writes that landed, by the client's ``client-request-id`` (store/requests.py): a row is
    # inserted in the write's own transaction, so it exists exactly when the write does; the
    # answer is added once produced, and a retry with the same id gets it again. A table of its
    # own so that adding it leaves older stores readable.
    Column("account", String(64), primary_key=True),
    Column("request_id", String(128), primary_key=True),
    Column("fingerprint", String(64), nullable=False),  # sha256 of method, path, query, body
    Column("expires", Float, nullable=False),
    Column("success_status", Integer, nullable=False),  # replayed when no answer was stored
    Column("status", Integer, nullable=True),  # the answer's; NULL until it is stored
    Column("headers", JSON, nullable=True),
    Column("body", LargeBinary, nullable=True),
    Index("ix_client_requests_expires", "expires"),
)

schema_info = Table(
    "schema_info",
    metadata,
    Column("version", Integer, primary_key=True),
)

sealing_keys = Table(
    "sealing_keys",
    metadata,
    # One row (pk 1): the key sealed environment settings are encrypted with
    # (service/rows/sealing.py).
    Column("pk", Integer, primary_key=True, autoincrement=False),
    Column("key", String(64), nullable=False),
)

certificates = Table(
    "certificates",
    metadata,
    # An account's certificates (Azure's deprecated certificates), by lower-case SHA-1
    # thumbprint. ``sealed`` is a Fernet token (the ``sealing_keys`` key) of what nodes get: the
    # certificate, its private key and the PFX file as added; never the password. New tables
    # leave older stores readable.
    Column("pk", PK, primary_key=True, autoincrement=True),
    Column("account", String(64), nullable=False),
    Column("thumbprint", String(40), nullable=False),
    Column("format", String(8), nullable=False),
    Column("state", String(16), nullable=False),
    Column("state_transition_time", Float, nullable=False),
    Column("previous_state", String(16), nullable=True),
    Column("previous_state_transition_time", Float, nullable=True),
    Column("public_data", Text, nullable=False),
    Column("sealed", Text, nullable=False),
    Column("delete_error", JSON, nullable=True),
    Column("creation_time", Float, nullable=False),
    UniqueConstraint("account", "thumbprint", name="uq_certificates_account_thumbprint"),
    sqlite_autoincrement=True,  # never reuse the id of a deleted row
)

node_certificates = Table(
    "node_certificates",
    metadata,
    # The certificates a node installed at its boot ``boot_id``: ``[{"thumbprint", "visibility"}]``
    # (a pool's later change reaches the node when it reboots or is reimaged, as in Azure).
    Column("node_pk", PK, ForeignKey("nodes.pk", ondelete="CASCADE"), primary_key=True),
    Column("boot_id", Integer, nullable=False),
    Column("refs", JSON, nullable=False),
)
