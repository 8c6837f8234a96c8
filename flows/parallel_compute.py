"""Parallel intensive compute: many independent tasks over a pool (deployment ``parallel-compute``).

Run it here with ``python flows/parallel_compute.py`` (embedded service, the ``local-pool`` block
from ``blocks/``), or deploy it with ``prefect deploy --prefect-file flows/prefect.yaml``.
"""

from prefect_batch.flows import parallel_compute

if __name__ == "__main__":
    result = parallel_compute(pool="local-pool", tasks=20)
    print(f"{result.succeeded_count} of {len(result.tasks)} tasks succeeded")
