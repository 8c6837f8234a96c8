"""The batch service: Azure Batch operations over the store, and the engine that runs them.

``BatchService`` is the set of operations for one account (what the REST API and the embedded
client call). The folders are the layers, and imports run one way: ``engine/`` (the loop that
runs nodes and tasks, :class:`~prefect_batch.service.engine.Engine`) -> ``ops/`` (the operations,
one transaction each) -> ``rows/`` (row-level helpers inside a caller's transaction) -> the
store, core and providers.
"""

from prefect_batch.service.ops.autoscale import AutoScaleOperations
from prefect_batch.service.ops.certificates import CertificateOperations
from prefect_batch.service.ops.files import FileOperations
from prefect_batch.service.ops.jobs import JobOperations
from prefect_batch.service.ops.nodes import NodeOperations
from prefect_batch.service.ops.nodesources import NodeSourceOperations
from prefect_batch.service.ops.nodeusers import NodeUserOperations
from prefect_batch.service.ops.pools import PoolOperations
from prefect_batch.service.ops.quotas import QuotaOperations
from prefect_batch.service.ops.schedules import JobScheduleOperations
from prefect_batch.service.ops.tasks import TaskOperations

__all__ = ["BatchService"]


class BatchService(
    PoolOperations,
    AutoScaleOperations,
    NodeOperations,
    NodeUserOperations,
    NodeSourceOperations,
    JobOperations,
    JobScheduleOperations,
    TaskOperations,
    FileOperations,
    QuotaOperations,
    CertificateOperations,
):
    """Every Azure Batch operation of one account, on one store."""
