"""Prefect flows of prefect-batch: drive jobs, manage jobs, and the three scenarios.

* :data:`run_batch_job` — the job driver flow: pool + tasks in, every task's result out, each
  batch task a Prefect task run (up to a threshold; above it a progress artifact and task runs
  for failed tasks only).
* :func:`batch_job_manager` — a decorator that makes a function the job manager of a job, as a
  flow with retries and a wall clock; a retry resumes the job without duplicating tasks.
* :func:`drive_job` — the driver without its flow, for flows of your own.
* :func:`using_client` — lend an open ``BatchClient`` to the flows called in a block.
* :func:`parallel_compute`, :func:`node_cleanup`, :func:`batch_processing` — the deployable
  scenarios (``flows/prefect.yaml``).

Importing this module imports Prefect; ``import prefect_batch`` does not.
"""

from prefect_batch.prefect.clients import using_client
from prefect_batch.prefect.driver import BatchJobFlow, drive_job, run_batch_job
from prefect_batch.prefect.follower import FollowOptions
from prefect_batch.prefect.job import BatchJobHandle, BatchTaskAddError
from prefect_batch.prefect.manager import batch_job_manager
from prefect_batch.prefect.results import BatchJobFailedError, BatchJobResult, BatchTaskResult
from prefect_batch.prefect.scenarios import batch_processing, node_cleanup, parallel_compute

__all__ = [
    "BatchJobFailedError",
    "BatchJobFlow",
    "BatchJobHandle",
    "BatchJobResult",
    "BatchTaskAddError",
    "BatchTaskResult",
    "FollowOptions",
    "batch_job_manager",
    "batch_processing",
    "drive_job",
    "node_cleanup",
    "parallel_compute",
    "run_batch_job",
    "using_client",
]
