"""The three scenarios of Azure Batch, as deployable flows (see ``flows/prefect.yaml``).

* :func:`parallel_compute` — many independent compute tasks over a pool (a prime sieve per
  task by default, or any command template).
* :func:`node_cleanup` — a maintenance job with one task on every node of a pool (deleting old
  files under the node's shared directory), meant for a cron schedule.
* :func:`batch_processing` — one task per input file, each writing its output file: from an S3
  prefix to an S3 prefix through resource and output files (or between local directories).

Each is one flow run (no subflow) that drives one job with :func:`~prefect_batch.prefect.
driver.drive_job`, so every batch task appears as a task run of it.

This module holds no scheduling: schedules live in the deployments.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow

from prefect_batch.prefect.blocks import BatchAccount, BatchPool
from prefect_batch.prefect.clients import load_pool, open_client
from prefect_batch.prefect.driver import drive_job
from prefect_batch.prefect.follower import FollowOptions, flow_logger
from prefect_batch.prefect.results import BatchJobResult

__all__ = ["batch_processing", "node_cleanup", "parallel_compute", "sieve_command"]

SIEVE_PROGRAM = """\
import sys
n = int(sys.argv[1])
sieve = bytearray([1]) * n
sieve[0:2] = bytes(2)
for p in range(2, int(n ** 0.5) + 1):
    if sieve[p]:
        sieve[p * p :: p] = bytes(len(range(p * p, n, p)))
print(f"primes below {n}: {sum(sieve)}")
"""


def sieve_command(limit: int, python: str | None = None) -> str:
    """A task counting the primes below ``limit`` (no shell)."""
    return shlex.join([python or sys.executable, "-c", SIEVE_PROGRAM, str(limit)])


def _pool_and_client(pool: BatchPool | str, account: BatchAccount | str | None) -> Any:
    pool_block = load_pool(pool)
    assert pool_block is not None
    client, owned = open_client(account or pool_block.account)
    try:
        pool_id = pool_block.ensure(client).id
    except BaseException:
        if owned:
            client.close()
        raise
    return pool_block, client, owned, pool_id


@flow(name="batch-parallel-compute")
def parallel_compute(
    pool: BatchPool | str,
    tasks: int = 100,
    command_template: str | None = None,
    base_limit: int = 200_000,
    step: int = 10_000,
    account: BatchAccount | str | None = None,
    priority: int = 0,
    max_task_retry_count: int = 1,
    task_run_threshold: int = 200,
) -> BatchJobResult:
    """Run ``tasks`` independent compute tasks on a pool.

    Args:
        pool: A ``BatchPool`` block or its name.
        tasks: How many tasks.
        command_template: The command line of task ``i`` (``{i}`` is replaced); default a prime
            sieve up to ``base_limit + i * step``.
        base_limit: The default program's first limit.
        step: How much larger each next task's limit is.
        account: A ``BatchAccount`` block or its name; default the pool's, else embedded.
        priority: The job's priority (-1000 to 1000).
        max_task_retry_count: Retries of a failing task.
        task_run_threshold: Task runs for every task up to this many tasks.
    """
    _, client, owned, pool_id = _pool_and_client(pool, account)
    try:
        commands = (
            command_template.format(i=i)
            if command_template
            else sieve_command(base_limit + i * step)
            for i in range(tasks)
        )
        return drive_job(
            client,
            commands,
            pool_id=pool_id,
            job={"priority": priority, "constraints": {"maxTaskRetryCount": max_task_retry_count}},
            options=FollowOptions(task_run_threshold=task_run_threshold),
        )
    finally:
        if owned:
            client.close()


CLEANUP_SCRIPT = (
    'd="$AZ_BATCH_NODE_SHARED_DIR/$1"; '
    'if [ -d "$d" ]; then n=$(find "$d" -type f -mtime +"$2" | wc -l); '
    'find "$d" -type f -mtime +"$2" -delete; else n=0; fi; '
    'echo "node $AZ_BATCH_NODE_ID: deleted $n files older than $2 days under $d"'
)


_READY = ("idle", "running")
_BROKEN = ("unusable", "starttaskfailed", "offline")


def _ready_nodes(client: Any, pool_id: str, timeout: float) -> list[Any]:
    """The pool's nodes that can take a task, once the pool has settled (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        pool = client.get_pool(pool_id)
        found = client.list_nodes(pool_id)
        ready = [n for n in found if str(getattr(n.state, "value", n.state)) in _READY]
        settled = str(getattr(pool.allocation_state, "value", pool.allocation_state)) == "steady"
        waiting = [
            n for n in found if str(getattr(n.state, "value", n.state)) not in _READY + _BROKEN
        ]
        if settled and not waiting and len(found) >= (pool.target_dedicated_nodes or 0):
            return ready
        if time.monotonic() > deadline:
            flow_logger().warning(
                "pool %s: %d of %d nodes ready after %.0f s; cleaning those",
                pool_id,
                len(ready),
                pool.target_dedicated_nodes or 0,
                timeout,
            )
            return ready
        time.sleep(0.5)


@flow(name="batch-node-cleanup")
def node_cleanup(
    pool: BatchPool | str,
    directory: str = "tmp",
    older_than_days: int = 7,
    account: BatchAccount | str | None = None,
    node_wait_seconds: float = 120.0,
) -> BatchJobResult:
    """Delete files older than ``older_than_days`` under each node's shared ``directory``.

    One task per node: pinned to the node by ``affinityInfo`` and taking all its slots, so each
    node runs its own. (Affinity is a hint, as in Azure: the result says which node ran what,
    and a node that got no task is logged.)

    Args:
        pool: A ``BatchPool`` block or its name.
        directory: Relative to ``$AZ_BATCH_NODE_SHARED_DIR``.
        older_than_days: Age in days (``find -mtime +N``).
        account: A ``BatchAccount`` block or its name; default the pool's, else embedded.
        node_wait_seconds: How long to wait for the pool's nodes to come up (a flow run that
            starts the embedded engine starts them).
    """
    if directory.startswith("/") or ".." in Path(directory).parts:
        raise ValueError("directory is relative to the node's shared directory, without '..'")
    pool_block, client, owned, pool_id = _pool_and_client(pool, account)
    try:
        nodes = _ready_nodes(client, pool_id, node_wait_seconds)
        slots = client.get_pool(pool_id).task_slots_per_node or 1
        tasks = [
            {
                "id": f"cleanup-{i}",
                "commandLine": shlex.join(
                    ["/bin/sh", "-c", CLEANUP_SCRIPT, "cleanup", directory, str(older_than_days)]
                ),
                "affinityInfo": {"affinityId": node.affinity_id or node.id},
                "requiredSlots": slots,
            }
            for i, node in enumerate(nodes)
        ]
        result = drive_job(client, tasks, pool_id=pool_id)
        covered = {t.node_id for t in result.tasks}
        missed = [n.id for n in nodes if n.id not in covered]
        if missed:
            flow_logger().warning("no cleanup task ran on node(s) %s this time", ", ".join(missed))
        return result
    finally:
        if owned:
            client.close()


@flow(name="batch-processing")
def batch_processing(
    pool: BatchPool | str,
    inputs: str,
    outputs: str,
    pattern: str = "*",
    command_template: str = "wc -w {input}",
    account: BatchAccount | str | None = None,
    storage: Any = None,
) -> BatchJobResult:
    """Process every input file matching ``pattern`` into one output file each.

    ``inputs`` and ``outputs`` are S3 prefixes (``s3://bucket/prefix``) or local directories.
    With S3, task ``i`` gets its input as a resource file (the service signs the URL; the node
    needs no credentials) and its output goes back as an output file to
    ``<outputs>/<input name>.out`` when the task succeeds. With directories, the nodes must see
    both (local nodes do).

    Task ``i`` runs ``command_template`` with ``{input}`` replaced by the (quoted) input path,
    its stdout being the output.

    Args:
        pool: A ``BatchPool`` block or its name.
        inputs: ``s3://bucket/prefix`` or a directory of the inputs.
        outputs: ``s3://bucket/prefix`` or a directory for the outputs (created).
        pattern: Glob of the input names (the last part of a key).
        command_template: The command, ``{input}`` for the input path (run by ``/bin/sh``).
        account: A ``BatchAccount`` block or its name; default the pool's, else embedded.
        storage: A prefect-aws ``S3Bucket``/``AwsCredentials`` block (or its ``type/name``
            slug) to list S3 inputs with; default the settings' storage
            (``PREFECT_BATCH_STORAGE_*``). The batch service signs with its own.
    """
    _, client, owned, pool_id = _pool_and_client(pool, account)
    try:
        if inputs.startswith("s3://"):
            tasks = _s3_tasks(inputs, outputs, pattern, command_template, storage, client)
        else:
            tasks = _local_tasks(Path(inputs), Path(outputs), pattern, command_template)
        return drive_job(client, tasks, pool_id=pool_id)
    finally:
        if owned:
            client.close()


def _task_command(template: str, input_path: str, output_path: str, prologue: str = "") -> str:
    script = template.format(input=shlex.quote(input_path)) + " > " + shlex.quote(output_path)
    return shlex.join(["/bin/sh", "-c", prologue + script])


def _local_tasks(inputs: Path, outputs: Path, pattern: str, template: str) -> list[dict[str, Any]]:
    outputs.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in inputs.glob(pattern) if p.is_file())
    return [
        {
            "id": f"file-{i}",
            "displayName": path.name,
            "commandLine": _task_command(
                template, str(path.resolve()), str((outputs / f"{path.name}.out").resolve())
            ),
        }
        for i, path in enumerate(files)
    ]


def _s3_tasks(
    inputs: str, outputs: str, pattern: str, template: str, storage: Any, client: Any
) -> list[dict[str, Any]]:
    import fnmatch

    from prefect_batch.providers.storage import ObjectStorage

    if not outputs.startswith("s3://"):
        raise ValueError(f"outputs must be an s3:// prefix when inputs are ({outputs!r})")
    if isinstance(storage, str):
        from prefect.blocks.core import Block

        storage = Block.load(storage)
    store = ObjectStorage.from_block(storage) if storage is not None else client.storage
    bucket, _, prefix = inputs[len("s3://") :].partition("/")
    keys = [
        o["Key"]
        for page in store.client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix
        )
        for o in page.get("Contents", ())
        if not o["Key"].endswith("/") and fnmatch.fnmatch(o["Key"].rsplit("/", 1)[-1], pattern)
    ]
    tasks = []
    for i, key in enumerate(sorted(keys)):
        name = key.rsplit("/", 1)[-1]
        tasks.append(
            {
                "id": f"file-{i}",
                "displayName": name,
                "commandLine": _task_command(
                    template, f"in/{key}", f"out/{name}.out", prologue="mkdir -p out && "
                ),
                # The key as a prefix: the container's objects under it land in in/<key>.
                "resourceFiles": [
                    {"storageContainerUrl": f"s3://{bucket}", "blobPrefix": key, "filePath": "in"}
                ],
                "outputFiles": [
                    {
                        "filePattern": f"out/{name}.out",
                        "destination": {"container": {"containerUrl": outputs}},
                        "uploadOptions": {"uploadCondition": "tasksuccess"},
                    }
                ],
            }
        )
    return tasks
