"""Daily file cleanup: a job with one task on every node of a pool (deployment
``daily-node-cleanup``, on a cron schedule in ``flows/prefect.yaml``).
"""

from prefect_batch.flows import node_cleanup

if __name__ == "__main__":
    result = node_cleanup(pool="local-pool", directory="tmp", older_than_days=7)
    print(f"cleaned {len(result.tasks)} nodes")
