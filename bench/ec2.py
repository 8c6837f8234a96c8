"""EC2 pools on moto's EC2 server, instances joined over SSH to private sshd servers on loopback.

Measures, in one run: (r) the time from ``resize`` to every node idle for pools of 1, 8 and 32
instances, and the EC2 API calls the service made per node launched and per node removed
(counted at botocore, by operation); (t) tasks/s of an EC2 pool of 3 nodes against a local pool
of 3 nodes in the same run (trivial tasks, 8 slots per node).

moto answers on 127.0.0.1; each instance's ``sshEndpoints`` entry is an sshd of its own on
127.0.0.2, 127.0.0.3, ... (clean shells: ``SetEnv SHLVL=1``). A guard refuses any other connect.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3  # noqa: E402
import botocore.client  # noqa: E402

from prefect_batch import BatchClient  # noqa: E402
from prefect_batch.testing import wait_until  # noqa: E402
from prefect_batch.testing.ec2 import REGION, ec2_template, loopback_only, moto_ec2  # noqa: E402
from prefect_batch.testing.sshd import SSHServers  # noqa: E402

CALLS: Counter[str] = Counter()
_real_call = botocore.client.BaseClient._make_api_call


def _counting_call(self: Any, operation: str, params: Any) -> Any:
    CALLS[operation] += 1
    return _real_call(self, operation, params)


def _idle(client: BatchClient, pool: str, count: int) -> bool:
    nodes = client.list_nodes(pool)
    return len(nodes) == count and all(n.state == "idle" for n in nodes)


def _rate(client: BatchClient, pool: str, job: str, tasks: int) -> float:
    client.create_job({"id": job, "poolInfo": {"poolId": pool}})
    start = time.perf_counter()
    client.create_tasks(job, [{"id": f"t{i}", "commandLine": "/bin/true"} for i in range(tasks)])
    counts = client.wait_for_job(job, poll_seconds=0.05, timeout=600)
    assert counts.task_counts.succeeded == tasks, counts
    return tasks / (time.perf_counter() - start)


def _calls(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _resize_row(client: BatchClient, pool: dict[str, Any], size: int) -> str:
    """(r) for one size: resize to ``size``, time it, count the calls, shrink, delete."""
    pid = f"r{size}"
    client.create_pool({"id": pid, "targetDedicatedNodes": 0, **pool})
    CALLS.clear()
    start = time.perf_counter()
    client.resize_pool(pid, {"targetDedicatedNodes": size})
    wait_until(lambda: _idle(client, pid, size), timeout=300, interval=0.05)
    took = time.perf_counter() - start
    launched = dict(CALLS)
    CALLS.clear()
    client.resize_pool(pid, {"targetDedicatedNodes": 0})
    wait_until(lambda: client.list_nodes(pid) == [], timeout=300, interval=0.05)
    wait_until(lambda: CALLS.get("TerminateInstances", 0) >= size, timeout=60)
    removed = dict(CALLS)
    client.delete_pool(pid)
    wait_until(lambda: not client.pool_exists(pid), timeout=120)
    per_launch = sum(launched.values())  # the watcher's polls (every 5 s) included
    return (
        f"(r) {size:>2} instance(s): resize -> all idle {took:6.2f} s; API calls per node "
        f"launched {per_launch / size:.1f} ({_calls(launched)}); per node removed "
        f"{sum(removed.values()) / size:.1f} ({_calls(removed)})"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1,8,32", help="pool sizes for (r)")
    ap.add_argument("--tasks", type=int, default=2000, help="tasks for (t)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ[name] = "bench"
    botocore.client.BaseClient._make_api_call = _counting_call  # type: ignore[method-assign]
    work = Path(tempfile.mkdtemp(prefix="pb-bench-ec2-"))
    rows: list[str] = []
    with (
        loopback_only() as refused,
        moto_ec2() as url,
        SSHServers(work / "sshd", count=max(sizes), extra_config=["SetEnv SHLVL=1"]) as servers,
    ):
        ec2 = boto3.client("ec2", region_name=REGION, endpoint_url=url)
        ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
        with BatchClient(home=work / "home") as client:
            client.create_node_source(
                ec2_template(
                    "bench",
                    servers,
                    url,
                    ami,
                    work / "known_hosts",
                    work / "instances",
                    pollSeconds=5,
                )
            )
            pool = {
                "vmSize": "t3.micro",
                "taskSlotsPerNode": 8,
                "virtualMachineConfiguration": {
                    "imageReference": {"publisher": "prefect-batch", "offer": "ec2", "sku": ami},
                    "nodeAgentSKUId": "batch.node.ec2.bench",
                },
            }
            for size in sizes:
                rows.append(_resize_row(client, pool, size))
            client.create_pool({"id": "t-ec2", "targetDedicatedNodes": 3, **pool})
            client.create_pool(
                {
                    "id": "t-local",
                    "vmSize": "local",
                    "targetDedicatedNodes": 3,
                    "taskSlotsPerNode": 8,
                }
            )
            wait_until(lambda: _idle(client, "t-ec2", 3), timeout=300)
            wait_until(lambda: _idle(client, "t-local", 3), timeout=300)
            ec2_rate = _rate(client, "t-ec2", "j-ec2", args.tasks)
            local_rate = _rate(client, "t-local", "j-local", args.tasks)
            rows.append(
                f"(t) {args.tasks:,} tasks, 3 nodes x 8 slots: EC2 pool {ec2_rate:,.0f} tasks/s, "
                f"local pool {local_rate:,.0f} tasks/s, EC2/local = {ec2_rate / local_rate:.2f}"
            )
            for pid in ("t-ec2", "t-local"):
                client.delete_pool(pid)
            client.close(kill_tasks=True)
    assert refused == [], f"connections refused off loopback: {refused}"
    print(
        f"\nprefect-batch EC2 pools ({time.strftime('%Y-%m-%d')}, moto on 127.0.0.1, loopback sshd)"
    )
    for row in rows:
        print(row)


if __name__ == "__main__":
    main()
