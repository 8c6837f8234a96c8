"""What Prefect's ``prefect.collections`` entry point loads: the worker and the blocks.

Importing this module registers the worker type ``batch`` (``prefect worker start --type
batch``, ``prefect work-pool create --type batch``) and the block types of
:mod:`prefect_batch.blocks` (a Prefect server registers them when it starts), so both work after
``pip install`` with no network. ``import prefect_batch`` itself stays free of Prefect.
"""

import prefect_batch.blocks  # noqa: F401  (registers the block types)
from prefect_batch.prefect.worker import BatchWorker

__all__ = ["BatchWorker"]
