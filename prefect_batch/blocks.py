"""Prefect blocks of prefect-batch: accounts, pools and node sources.

Register them with ``prefect block register -m prefect_batch.blocks``; ``blocks/register.py``
also saves the block documents of ``blocks/*.yaml``.

* :class:`BatchAccount` — the batch service (URL, or empty for embedded), account name and key.
* :class:`BatchPool` — a pool spec; ``ensure()`` creates the pool or brings it up to date.
* :class:`LocalNodeSource`, :class:`SSHHostGroup`, :class:`EC2Template` — where nodes come from.

Importing this module imports Prefect (and prefect-aws); ``import prefect_batch`` does not.
"""

from prefect_batch.prefect.blocks import BatchAccount, BatchPool, BatchPoolSpecError
from prefect_batch.prefect.node_sources import (
    EC2Template,
    LocalNodeSource,
    NodeSourceBlock,
    SSHHost,
    SSHHostGroup,
)

__all__ = [
    "BatchAccount",
    "BatchPool",
    "BatchPoolSpecError",
    "EC2Template",
    "LocalNodeSource",
    "NodeSourceBlock",
    "SSHHost",
    "SSHHostGroup",
]
