"""What task confinement costs per task, confined against unconfined, in one run.

    python bench/confinement.py [--tasks 60] [--python]

Runs ``--tasks`` trivial tasks (``/bin/true``, or ``python -c pass`` with ``--python``) on one
local node with one slot, unconfined and then confined (Landlock + capability drop), each in a
fresh embedded service, and prints seconds per task end to end and the ratio. Figures drift on a
shared 2-core machine; compare the ratio of one run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from prefect_batch.testing import embedded_client, wait_for_nodes, wait_until  # noqa: E402


def per_task(confine: bool, tasks: int, command: str) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        with embedded_client(Path(tmp) / "home", confine_tasks=confine) as client:
            client.create_pool({"id": "p", "vmSize": "local", "targetDedicatedNodes": 1})
            wait_for_nodes(client, "p", 1, timeout=60)
            client.create_job({"id": "j", "poolInfo": {"poolId": "p"}})
            start = time.perf_counter()
            client.create_tasks(
                "j", [{"id": f"t{i}", "commandLine": command} for i in range(tasks)]
            )
            wait_until(
                lambda: client.get_job_task_counts("j").task_counts.completed == tasks,
                timeout=600,
                interval=0.02,
            )
            return (time.perf_counter() - start) / tasks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=60)
    parser.add_argument("--python", action="store_true")
    args = parser.parse_args()
    command = f"{sys.executable} -c pass" if args.python else "/bin/true"
    print(time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), command)
    plain = per_task(False, args.tasks, command)
    confined = per_task(True, args.tasks, command)
    print(
        f"unconfined {plain * 1000:7.1f} ms/task, confined {confined * 1000:7.1f} ms/task, "
        f"ratio {confined / plain:4.2f}x"
    )


if __name__ == "__main__":
    main()
