"""The batch service: Azure Batch operations over the store, and the engine that runs them.

``BatchService`` is the set of operations for one account (what the REST API and the embedded
client call); :class:`~prefect_batch.service.engine.Engine` is the loop that runs nodes and tasks.
"""

from prefect_batch.service.autoscale import AutoScaleOperations
from prefect_batch.service.files import FileOperations
from prefect_batch.service.jobs import JobOperations
from prefect_batch.service.nodes import NodeOperations
from prefect_batch.service.nodesources import NodeSourceOperations
from prefect_batch.service.pools import PoolOperations
from prefect_batch.service.quotas import QuotaOperations
from prefect_batch.service.schedules import JobScheduleOperations
from prefect_batch.service.tasks import TaskOperations

__all__ = ["BatchService"]


class BatchService(
    PoolOperations,
    AutoScaleOperations,
    NodeOperations,
    NodeSourceOperations,
    JobOperations,
    JobScheduleOperations,
    TaskOperations,
    FileOperations,
    QuotaOperations,
):
    """Every Azure Batch operation of one account, on one store."""
