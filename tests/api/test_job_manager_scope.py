"""Job managers behind a server: they reach it with a key scoped to their own job."""

from __future__ import annotations

import base64
import sys

import pytest

from prefect_batch import BatchAuthenticationError, BatchClient
from prefect_batch.core.sharedkey import decode_key, derive_job_key, job_scoped_name
from prefect_batch.testing import wait_until
from tests.api.conftest import Server

# Adds 20 tasks with the client its environment configures, waits for them, and exits.
MANAGER = (
    "import os, time\n"
    "from prefect_batch import BatchClient\n"
    "job = os.environ['AZ_BATCH_JOB_ID']\n"
    "assert '/jobs/' in os.environ['PREFECT_BATCH_ACCOUNT_NAME']\n"
    "assert 'PREFECT_BATCH_DATABASE_URL' not in os.environ\n"
    "with BatchClient() as c:\n"
    "    c.create_tasks(job, [{'id': f'w{i}', 'commandLine': '/bin/true'} for i in range(20)])\n"
    "    for _ in range(600):\n"
    "        if c.get_job_task_counts(job).task_counts.succeeded >= 20:\n"
    "            break\n"
    "        time.sleep(0.1)\n"
)


def _scoped_client(server: Server, job_id: str) -> BatchClient:
    key = derive_job_key(decode_key(server.account.primary), job_id)
    return BatchClient(
        job_scoped_name(server.account.name, job_id),
        url=server.url,
        account_key=base64.b64encode(key).decode(),
    )


@pytest.fixture(scope="module")
def admin(server: Server):
    with BatchClient(
        server.account.name, url=server.url, account_key=server.account.primary
    ) as client:
        client.create_pool({"id": "jmpool", "vmSize": "local", "targetDedicatedNodes": 2})
        yield client


def test_a_job_manager_adds_tasks_through_the_server_and_ends_the_job(admin: BatchClient) -> None:
    admin.create_job(
        {
            "id": "managed",
            "poolInfo": {"poolId": "jmpool"},
            "jobManagerTask": {
                "id": "manager",
                "commandLine": f'{sys.executable} -c "{MANAGER}"',
            },
        }
    )
    wait_until(
        lambda: admin.get_job("managed").state == "completed",
        timeout=120,
        message="the job manager ended the job",
    )
    job = admin.get_job("managed")
    assert job.execution_info.termination_reason == "JMComplete"
    manager = admin.get_task("managed", "manager")
    assert manager.execution_info.result == "success", admin.get_task_file(
        "managed", "manager", "stderr.txt"
    )
    counts = admin.get_job_task_counts("managed").task_counts
    assert counts.succeeded == 21  # the manager and its 20 tasks


def test_a_job_key_works_for_its_job_only(server: Server, admin: BatchClient) -> None:
    admin.create_job({"id": "mine", "poolInfo": {"poolId": "jmpool"}})
    admin.create_job({"id": "theirs", "poolInfo": {"poolId": "jmpool"}})
    with _scoped_client(server, "mine") as scoped:
        scoped.create_task("mine", {"id": "t1", "commandLine": "/bin/true"})
        assert scoped.get_job("MINE").id == "mine"  # ids are case-insensitive
        with pytest.raises(BatchAuthenticationError) as err:
            scoped.get_job("theirs")
        assert err.value.code == "AuthenticationFailed"
        with pytest.raises(BatchAuthenticationError):
            scoped.list_pools()
        with pytest.raises(BatchAuthenticationError):
            scoped.create_task("theirs", {"id": "t1", "commandLine": "/bin/true"})
    assert [t.id for t in admin.list_tasks("theirs")] == []
    # The key of one job does not sign for another job.
    key = base64.b64encode(derive_job_key(decode_key(server.account.primary), "mine")).decode()
    with BatchClient(
        job_scoped_name(server.account.name, "theirs"), url=server.url, account_key=key
    ) as forged:
        with pytest.raises(BatchAuthenticationError):
            forged.get_job("theirs")
