"""The ``sim`` kind: in-process agents that let a benchmark measure the engine alone.

They must behave, as far as the engine can tell, like agents: tasks complete with exit code 0
after ``taskSeconds``, a terminated task ends killed, a deleted pool's nodes go away, and a
registration with a bad field changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from prefect_batch import BatchClient, BatchInvalidRequestError
from prefect_batch.testing import simnodes, wait_for_nodes, wait_for_task, wait_until


@pytest.fixture(autouse=True)
def _sim_kind() -> None:
    simnodes.install()


def _pool(client: BatchClient, pool_id: str, *, nodes: int, seconds: float = 0.0) -> str:
    source = f"s{uuid.uuid4().hex[:8]}"
    client.create_node_source({"kind": "sim", "name": source, "taskSeconds": seconds})
    client.create_pool(
        {
            "id": pool_id,
            "vmSize": "sim",
            "targetDedicatedNodes": nodes,
            "taskSlotsPerNode": 4,
            "virtualMachineConfiguration": {
                "imageReference": {"publisher": "prefect-batch", "offer": "sim", "sku": source},
                "nodeAgentSKUId": simnodes.KIND.sku(source),
            },
        }
    )
    wait_for_nodes(client, pool_id, nodes, timeout=60)
    return source


def test_simulated_nodes_run_every_task_once(client_factory: Callable[..., BatchClient]) -> None:
    client = client_factory()
    source = _pool(client, "sim", nodes=5)
    client.create_job({"id": "j", "poolInfo": {"poolId": "sim"}})
    client.create_tasks("j", [{"id": f"t{i}", "commandLine": "true"} for i in range(300)])
    client.wait_for_job("j", timeout=120)
    tasks = client.list_tasks("j")
    assert len(tasks) == 300
    assert {t.state for t in tasks} == {"completed"}
    assert {t.execution_info.exit_code for t in tasks} == {0}
    assert {t.execution_info.result for t in tasks} == {"success"}
    # Started and ended in one batch of events, a task is written once, by its completion;
    # what it shows is the same as if it had been written running first.
    assert {t.previous_state for t in tasks} == {"running"}
    assert all(t.previous_state_transition_time == t.execution_info.start_time for t in tasks)
    sent = simnodes.sent_runs(client.account_name, source)
    assert set(sent) == {f"j/t{i}" for i in range(300)}
    nodes_used = {t.node_info.node_id for t in tasks}
    assert len(nodes_used) > 1  # spread over the pool, not one node


def test_a_terminated_simulated_task_ends_killed(
    client_factory: Callable[..., BatchClient],
) -> None:
    client = client_factory()
    _pool(client, "slow", nodes=1, seconds=600)
    client.create_job({"id": "j", "poolInfo": {"poolId": "slow"}})
    client.create_task("j", {"id": "long", "commandLine": "sleep 600"})
    wait_for_task(client, "j", "long", "running", timeout=60)
    client.terminate_task("j", "long")
    task = wait_for_task(client, "j", "long", "completed", timeout=60)
    assert task.execution_info.result == "failure"
    assert client.get_task("j", "long").execution_info.end_time is not None


def test_a_deleted_simulated_pool_goes_away(client_factory: Callable[..., BatchClient]) -> None:
    client = client_factory()
    _pool(client, "gone", nodes=3)
    client.delete_pool("gone")
    wait_until(lambda: not client.pool_exists("gone"), timeout=60, message="pool deleted")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "sim", "name": "a", "taskSeconds": -1}, "taskSeconds"),
        ({"kind": "sim", "name": "a", "taskSeconds": "1"}, "taskSeconds"),
        ({"kind": "sim", "name": "a", "cores": 4}, "cores"),
        ({"kind": "sim"}, "name"),
    ],
)
def test_a_bad_registration_names_its_field_and_adds_nothing(
    client_factory: Callable[..., BatchClient], body: dict[str, object], field: str
) -> None:
    client = client_factory()
    with pytest.raises(BatchInvalidRequestError) as err:
        client.create_node_source(body)
    assert field in str(err.value)
    assert [s for s in client.list_node_sources() if getattr(s, "kind", None) == "sim"] == []
