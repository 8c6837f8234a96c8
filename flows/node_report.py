"""Where a flow run ran (deployment ``node-report``, on the ``batch`` work pool ``batch-flows``).

The flow run itself is a batch task: the ``batch`` worker submits it to a pool of the batch
service, and this flow reports the node, pool, job and task it found itself on, with the Python
and Prefect versions there — the first flow to deploy to a new batch work pool. Run it here with
``python flows/node_report.py`` (no batch node: it says so).
"""

from __future__ import annotations

import os
import platform
import sys

import prefect
from prefect import flow

NOT_ON_A_NODE = "(not on a batch node)"


@flow(log_prints=True)
def node_report() -> dict[str, str]:
    """The batch node, pool, job and task of this flow run, and what runs it there."""
    report = {
        "node": os.environ.get("AZ_BATCH_NODE_ID", NOT_ON_A_NODE),
        "pool": os.environ.get("AZ_BATCH_POOL_ID", NOT_ON_A_NODE),
        "job": os.environ.get("AZ_BATCH_JOB_ID", NOT_ON_A_NODE),
        "task": os.environ.get("AZ_BATCH_TASK_ID", NOT_ON_A_NODE),
        "host": platform.node(),
        "python": sys.version.split()[0],
        "prefect": prefect.__version__,
    }
    for name, value in report.items():
        print(f"{name}: {value}")
    return report


if __name__ == "__main__":
    node_report()
