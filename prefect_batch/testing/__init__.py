"""Helpers for testing code that uses prefect-batch (and prefect-batch itself).

:mod:`prefect_batch.testing.fixtures` holds an embedded client on a throw-away home, polling
helpers with time limits, task commands that wait on a file, and an invariant check of a job.
Nothing here imports pytest: wrap the helpers in fixtures of your own.
"""

from prefect_batch.testing.fixtures import (
    FAST_SETTINGS,
    check_invariants,
    embedded_client,
    fast_settings,
    gate_command,
    wait_for_nodes,
    wait_for_task,
    wait_until,
)

__all__ = [
    "FAST_SETTINGS",
    "check_invariants",
    "embedded_client",
    "fast_settings",
    "gate_command",
    "wait_for_nodes",
    "wait_for_task",
    "wait_until",
]
