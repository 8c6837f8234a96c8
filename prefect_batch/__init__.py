"""prefect-batch: Azure Batch, rebuilt as a Prefect plugin on machines you own or rent.

Pools of compute nodes, jobs of command-line tasks queued by priority, retries, wall-clock limits,
files — with Azure Batch's resource model and wire names.

    from prefect_batch import BatchClient

    with BatchClient() as client:                      # embedded service, local nodes
        client.create_pool({"id": "p", "vmSize": "local", "targetDedicatedNodes": 2})
        client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
        client.create_tasks("j", [{"id": f"t{i}", "commandLine": f"echo {i}"} for i in range(10)])
        client.wait_for_job("j")
"""

from prefect_batch.client import BatchClient
from prefect_batch.exceptions import (
    BatchAuthenticationError,
    BatchConflictError,
    BatchInvalidRequestError,
    BatchNotFoundError,
    BatchServiceError,
    PrefectBatchError,
)
from prefect_batch.models import (
    BatchJob,
    BatchJobCreateOptions,
    BatchNode,
    BatchPool,
    BatchPoolCreateOptions,
    BatchTask,
    BatchTaskCreateOptions,
)

__version__ = "0.1.0"

__all__ = [
    "BatchAuthenticationError",
    "BatchClient",
    "BatchConflictError",
    "BatchInvalidRequestError",
    "BatchJob",
    "BatchJobCreateOptions",
    "BatchNode",
    "BatchNotFoundError",
    "BatchPool",
    "BatchPoolCreateOptions",
    "BatchServiceError",
    "BatchTask",
    "BatchTaskCreateOptions",
    "PrefectBatchError",
    "__version__",
]
