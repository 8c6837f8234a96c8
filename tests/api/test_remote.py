"""``BatchClient(url=..., account_key=...)`` and the CLI against a server: the same methods,
returns and errors as the embedded service.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from prefect_batch import (
    BatchClient,
    BatchConflictError,
    BatchInvalidRequestError,
    BatchNotFoundError,
    PrefectBatchError,
)
from prefect_batch.cli import app as cli_app
from prefect_batch.remote import RemoteBatchService
from prefect_batch.testing import check_invariants, wait_for_nodes
from tests.api.conftest import Server


@pytest.fixture(scope="module")
def remote(server: Server) -> Iterator[BatchClient]:
    with BatchClient(server.account.name, url=server.url, account_key=server.account.primary) as c:
        yield c


@pytest.fixture(scope="module")
def pool(remote: BatchClient) -> str:
    remote.create_pool(
        {"id": "rpool", "vmSize": "local", "targetDedicatedNodes": 1, "taskSlotsPerNode": 4}
    )
    return "rpool"


def test_the_client_speaks_to_the_server(server: Server, remote: BatchClient, pool: str) -> None:
    assert isinstance(remote.service, RemoteBatchService)
    assert remote.store is None
    assert "key" not in repr(remote.service).replace("key=<hidden>", "")
    remote.create_job(
        {"id": "rjob", "poolInfo": {"poolId": pool}, "priority": 7, "usesTaskDependencies": True}
    )
    tasks = [
        {"id": f"t{i}", "commandLine": f"/bin/sh -c 'printf line{i}; mkdir -p d; echo x > d/f'"}
        for i in range(150)
    ]
    tasks.append({"id": "last", "commandLine": "/bin/true", "dependsOn": {"taskIds": ["t0"]}})
    tasks.append({"id": "t0", "commandLine": "/bin/true"})  # duplicate id: its own error
    tasks.append({"id": "bad", "commandLine": "/bin/true", "priority": "high"})  # unknown field
    result = remote.create_tasks("rjob", tasks)
    statuses = [r.status for r in result.result_values]
    assert len(statuses) == 153
    assert statuses.count("success") == 151
    by_id = {r.task_id: r for r in result.result_values if r.status != "success"}
    assert by_id["t0"].error.code == "TaskExists"
    assert by_id["bad"].error.code == "UnsupportedProperty"

    counts = remote.wait_for_job("rjob", timeout=60, poll_seconds=0.1)
    assert counts.task_counts.succeeded == 151
    assert remote.get_job("rjob").priority == 7
    assert len(remote.list_tasks("rjob")) == 151
    assert len(remote.list_tasks("rjob", state="completed")) == 151
    assert remote.list_tasks("rjob", state="active") == []
    assert remote.get_task("rjob", "t42").execution_info.exit_code == 0

    assert remote.get_task_file("rjob", "t42", "stdout.txt") == b"line42"
    assert remote.get_task_file("rjob", "t42", "stdout.txt", offset=2, length=2) == b"ne"
    assert remote.get_task_file("rjob", "t42", "stdout.txt", offset=4) == b"42"
    assert remote.get_task_file("rjob", "t42", "stdout.txt", offset=99) == b""
    assert remote.get_task_file("rjob", "t42", "stdout.txt", length=0) == b""
    props = remote.get_task_file_properties("rjob", "t42", "stdout.txt")
    assert props.properties.content_length == 6 and not props.is_directory
    names = {f.name for f in remote.list_task_files("rjob", "t42", recursive=True)}
    assert {"stdout.txt", "stderr.txt", "wd", "wd/d", "wd/d/f"} <= names
    remote.delete_task_file("rjob", "t42", "wd/d", recursive=True)
    with pytest.raises(BatchNotFoundError) as info:
        remote.get_task_file("rjob", "t42", "wd/d/f")
    assert info.value.code == "FileNotFound"

    node = remote.list_nodes(pool)[0]
    top = {f.name for f in remote.list_node_files(pool, node.id)}
    assert {"shared", "startup", "rjob"} <= top
    below = {f.name for f in remote.list_node_files(pool, node.id, path="rjob/t42")}
    # A confined task (a server confines by default) also gets its private TMPDIR, tmp/.
    assert below - {"rjob/t42/tmp"} == {"rjob/t42/stdout.txt", "rjob/t42/stderr.txt", "rjob/t42/wd"}
    assert remote.get_node_file(pool, node.id, "rjob/t42/stdout.txt") == b"line42"
    assert remote.get_node_file_properties(pool, node.id, "rjob/t42").is_directory

    attempts = remote.list_task_attempts("rjob", "t42")
    assert attempts and attempts[0]["nodeId"] == node.id

    with BatchClient(server.account.name, database_url=server.store.url, engine=False) as local:
        check_invariants(local, "rjob")


def test_node_metrics_through_the_server(remote: BatchClient, pool: str) -> None:
    node = remote.list_nodes(pool)[0]
    metrics = remote.get_node_metrics(pool, node.id)
    assert (metrics["poolId"], metrics["nodeId"]) == (pool, node.id)
    assert {"lastHeartbeat", "cpuPercent", "memoryBytes", "networkOutBytes"} <= set(metrics)


def test_errors_are_the_embedded_errors(remote: BatchClient, pool: str) -> None:
    with pytest.raises(BatchNotFoundError) as info:
        remote.get_pool("missing")
    assert (info.value.code, info.value.status_code) == ("PoolNotFound", 404)
    assert info.value.values == {"PoolId": "missing"}
    assert not remote.pool_exists("missing") and remote.pool_exists(pool)
    remote.create_job({"id": "dup", "poolInfo": {"poolId": pool}})
    with pytest.raises(BatchConflictError) as conflict:
        remote.create_job({"id": "dup", "poolInfo": {"poolId": pool}})
    assert conflict.value.code == "JobExists"
    with pytest.raises(BatchInvalidRequestError) as bad:
        remote.create_pool({"id": "x", "vmSize": "local", "taskSlotsPerNode": 9999})
    assert bad.value.code == "InvalidPropertyValue"
    assert bad.value.values["PropertyName"] == "taskSlotsPerNode"
    with pytest.raises(BatchInvalidRequestError) as big:
        remote.create_task_collection(
            "dup", [{"id": f"x{i}", "commandLine": "a"} for i in range(101)]
        )
    assert big.value.status_code == 413


def test_jobs_and_pools_change_through_the_server(remote: BatchClient, pool: str) -> None:
    remote.create_job({"id": "life", "poolInfo": {"poolId": pool}})
    remote.update_job("life", {"priority": 50})
    assert remote.get_job("life").priority == 50
    remote.replace_job("life", {"poolInfo": {"poolId": pool}})
    assert remote.get_job("life").priority == 0
    remote.disable_job("life", "requeue")
    assert remote.get_job("life").state in ("disabling", "disabled")
    remote.create_task("life", {"id": "only", "commandLine": "/bin/false"})
    remote.update_task("life", "only", {"maxTaskRetryCount": 1})  # still queued: job disabled
    assert remote.get_task("life", "only").constraints.max_task_retry_count == 1
    remote.enable_job("life")
    remote.wait_for_job("life", timeout=60, poll_seconds=0.1)
    failed = remote.get_task("life", "only").execution_info
    assert (failed.result, failed.retry_count) == ("failure", 1)
    remote.reactivate_task("life", "only")
    remote.wait_for_job("life", timeout=60, poll_seconds=0.1)
    remote.terminate_job("life", "Enough")
    assert remote.get_job("life").execution_info.termination_reason == "Enough"
    remote.delete_job("life")
    assert "life" not in {j.id for j in remote.list_jobs()}

    remote.update_pool(pool, {"metadata": [{"name": "k", "value": "v"}]})
    assert remote.get_pool(pool).metadata[0].value == "v"
    remote.resize_pool(pool, {"targetDedicatedNodes": 2})
    wait_for_nodes(remote, pool, 2, timeout=60)
    counts = {c.pool_id: c for c in remote.list_pool_node_counts()}
    assert counts[pool].dedicated.total == 2
    assert remote.list_supported_images()[0].node_agent_sku_id == "batch.node.local"


def test_a_client_needs_a_valid_key(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PREFECT_BATCH_ACCOUNT_KEY", raising=False)
    with pytest.raises(PrefectBatchError, match="key"):
        BatchClient("acct", url=server.url)
    with BatchClient("acct", url=server.url, account_key="QUJD") as wrong:
        with pytest.raises(PrefectBatchError) as info:
            wrong.list_pools()
    assert info.value.code == "AuthenticationFailed"  # type: ignore[attr-defined]


def test_the_cli_works_against_the_server(
    server: Server, pool: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PREFECT_BATCH_SERVICE_URL", server.url)
    monkeypatch.setenv("PREFECT_BATCH_ACCOUNT_NAME", server.account.name)
    monkeypatch.setenv("PREFECT_BATCH_ACCOUNT_KEY", server.account.primary)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(cli_app, list(args))
        assert result.exit_code == 0, result.output + result.stderr
        return result.stdout

    assert pool in run("pool", "list")
    run("job", "create", "clijob", "--pool", pool)
    run("task", "add", "clijob", "hello", "/bin/echo 'hi from the cli'")
    run("job", "wait", "clijob", "--timeout", "60")
    assert run("file", "get", "--job", "clijob", "--task", "hello", "stdout.txt").strip() == (
        "hi from the cli"
    )
