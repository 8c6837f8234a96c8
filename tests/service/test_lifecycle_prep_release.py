"""Job preparation and release tasks: once per node before the job's first task there, release on
every node that ran preparation when the job ends, and the job ``completed`` only after that.
"""

from __future__ import annotations

import shlex
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from prefect_batch import BatchClient, BatchConflictError, BatchInvalidRequestError
from prefect_batch.testing import gate_command, wait_for_nodes, wait_for_task, wait_until

from .test_lifecycle_states import state_log_fixture

state_log = state_log_fixture()


def _sh(script: str) -> str:
    return "/bin/sh -c " + shlex.quote(script)


def _lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def _pool(client: BatchClient, pool: str, nodes: int, slots: int = 1) -> list[str]:
    client.create_pool(
        {"id": pool, "vmSize": "local", "targetDedicatedNodes": nodes, "taskSlotsPerNode": slots}
    )
    return [n.id for n in wait_for_nodes(client, pool, nodes, timeout=30)]


def _pairs(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


REPORT = (
    "echo READY=$(cat $AZ_BATCH_JOB_PREP_WORKING_DIR/ready); "
    "echo ROOT=$AZ_BATCH_NODE_ROOT_DIR; echo NODE=$AZ_BATCH_NODE_ID; "
    "echo PREP=$AZ_BATCH_JOB_PREP_DIR; echo PREPWD=$AZ_BATCH_JOB_PREP_WORKING_DIR; "
    "echo OLD=$AZ_BATCH_NODE_JOB_PREP_DIR; echo OLDWD=$AZ_BATCH_NODE_JOB_PREP_WORKING_DIR"
)


def test_preparation_runs_once_per_node_before_the_jobs_tasks(
    client: BatchClient, make_job: Callable[..., str], tmp_path: Path
) -> None:
    preps = tmp_path / "preps"
    pool = "prep"
    nodes = _pool(client, pool, 2, slots=2)
    job = make_job(
        pool,
        jobPreparationTask={
            "commandLine": _sh(
                f"echo $AZ_BATCH_NODE_ID >> {preps}; echo $(pwd) > ready; "
                "echo TASK=$AZ_BATCH_TASK_ID; echo WD=$AZ_BATCH_TASK_WORKING_DIR"
            ),
        },
    )
    client.create_tasks(job, [{"id": f"t{i}", "commandLine": _sh(REPORT)} for i in range(8)])
    assert client.wait_for_job(job, timeout=30).task_counts.succeeded == 8

    ran_on: Counter[str] = Counter()
    for task in client.list_tasks(job):
        out = _pairs(client.get_task_file(job, task.id, "stdout.txt").decode())
        prep_dir = f"{out['ROOT']}/{job}/jobpreparation"
        # The task saw the preparation's working directory and what it left there.
        assert out["READY"] == f"{prep_dir}/wd"
        assert (out["PREP"], out["PREPWD"]) == (prep_dir, f"{prep_dir}/wd")
        assert (out["OLD"], out["OLDWD"]) == (prep_dir, f"{prep_dir}/wd")
        ran_on[out["NODE"]] += 1
    assert set(ran_on) == set(nodes)  # spread over both nodes
    assert Counter(_lines(preps)) == {n: 1 for n in nodes}  # once per node

    status = {s.node_id: s for s in client.list_job_preparation_and_release_task_status(job)}
    assert set(status) == set(nodes)
    for node_id, s in status.items():
        prep = s.job_preparation_task_execution_info
        assert (prep.state, prep.result, prep.exit_code, prep.retry_count) == (
            "completed",
            "success",
            0,
            0,
        )
        assert prep.task_root_directory == f"{job}/jobpreparation"
        assert s.job_release_task_execution_info is None
        first = min(
            t.execution_info.start_time
            for t in client.list_tasks(job)
            if t.node_info.node_id == node_id
        )
        assert prep.end_time <= first
        out = _pairs(
            client.get_node_file(pool, node_id, f"{job}/jobpreparation/stdout.txt").decode()
        )
        assert out["TASK"] == "jobpreparation"
        assert out["WD"].endswith(f"/{node_id}/{job}/jobpreparation/wd")
    client.delete_pool(pool)


def test_release_runs_where_preparation_ran_and_the_job_completes_after_it(
    client: BatchClient, make_job: Callable[..., str], gate: Path, tmp_path: Path
) -> None:
    preps, releases, hold = tmp_path / "preps", tmp_path / "releases", tmp_path / "hold"
    pool = "release"
    nodes = _pool(client, pool, 3)
    job = make_job(
        pool,
        jobPreparationTask={"commandLine": _sh(f"echo $AZ_BATCH_NODE_ID >> {preps}")},
        jobReleaseTask={
            "id": "cleanup",
            "commandLine": gate_command(
                gate,
                then=f"echo $AZ_BATCH_NODE_ID >> {releases}; echo PREP=$AZ_BATCH_JOB_PREP_DIR; "
                "echo TASK=$AZ_BATCH_TASK_ID",
            ),
        },
    )
    # Two tasks held at once: on two of the three nodes.
    client.create_tasks(job, [{"id": f"t{i}", "commandLine": gate_command(hold)} for i in range(2)])
    wait_until(
        lambda: len(client.list_tasks(job, state="running")) == 2,
        timeout=30,
        message="two tasks running",
    )
    hold.touch()
    client.wait_for_job(job, timeout=30)
    prepped = set(_lines(preps))
    assert len(prepped) == 2 and prepped < set(nodes)

    client.terminate_job(job)

    def releases_running():
        found = client.list_job_preparation_and_release_task_status(job)
        infos = [s.job_release_task_execution_info for s in found]
        return found if all(i is not None and i.state == "running" for i in infos) else None

    status = wait_until(releases_running, timeout=30, message="release tasks running")
    assert {s.node_id for s in status} == prepped
    assert client.get_job(job).state == "terminating"  # waits for its release tasks
    gate.touch()
    wait_until(
        lambda: client.get_job(job).state == "completed", timeout=30, message="job completed"
    )
    assert Counter(_lines(releases)) == {n: 1 for n in prepped}
    job_end = client.get_job(job).execution_info.end_time
    for s in client.list_job_preparation_and_release_task_status(job):
        release = s.job_release_task_execution_info
        assert (release.state, release.result, release.exit_code) == ("completed", "success", 0)
        assert release.end_time <= job_end
        out = _pairs(client.get_node_file(pool, s.node_id, f"{job}/cleanup/stdout.txt").decode())
        assert out["TASK"] == "cleanup"
        assert out["PREP"].endswith(f"/{s.node_id}/{job}/jobpreparation")
    client.delete_pool(pool)


def test_a_failed_preparation_keeps_the_jobs_tasks_off_that_node(
    client: BatchClient, make_job: Callable[..., str], gate: Path, tmp_path: Path
) -> None:
    tries = tmp_path / "tries"
    pool = "prep-fail"
    bad, good = _pool(client, pool, 2)
    job = make_job(
        pool,
        jobPreparationTask={
            "commandLine": _sh(
                f'echo $AZ_BATCH_NODE_ID >> {tries}; [ "$AZ_BATCH_NODE_ID" != "{bad}" ]'
            ),
            "constraints": {"maxTaskRetryCount": 1},
        },
    )
    client.create_tasks(job, [{"id": f"t{i}", "commandLine": "true"} for i in range(6)])
    counts = client.wait_for_job(job, timeout=30)
    assert counts.task_counts.succeeded == 6
    assert {t.node_info.node_id for t in client.list_tasks(job)} == {good}
    status = {
        s.node_id: s.job_preparation_task_execution_info
        for s in client.list_job_preparation_and_release_task_status(job)
    }
    assert (status[bad].result, status[bad].exit_code, status[bad].retry_count) == ("failure", 1, 1)
    assert status[bad].failure_info is not None
    assert status[good].result == "success"
    assert Counter(_lines(tries)) == {bad: 2, good: 1}
    # The node itself is fine: another job's tasks run there.
    other = make_job(pool)
    client.create_tasks(
        other, [{"id": f"o{i}", "commandLine": gate_command(gate)} for i in range(2)]
    )
    wait_until(
        lambda: len(client.list_tasks(other, state="running")) == 2,
        timeout=30,
        message="other job on both nodes",
    )
    assert {t.node_info.node_id for t in client.list_tasks(other)} == {bad, good}
    assert client.get_node(pool, bad).state == "running"
    gate.touch()
    client.wait_for_job(other, timeout=30)
    client.delete_pool(pool)


def test_without_wait_for_success_tasks_run_after_a_failed_preparation(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    pool = "prep-nowait"
    (node,) = _pool(client, pool, 1)
    job = make_job(pool, jobPreparationTask={"commandLine": _sh("exit 4"), "waitForSuccess": False})
    client.create_task(job, {"id": "t", "commandLine": "true"})
    task = wait_for_task(client, job, "t")
    assert (task.execution_info.result, task.node_info.node_id) == ("success", node)
    (status,) = client.list_job_preparation_and_release_task_status(job)
    assert (
        status.job_preparation_task_execution_info.result,
        status.job_preparation_task_execution_info.exit_code,
    ) == ("failure", 4)
    client.delete_pool(pool)


def test_preparation_and_release_requests_are_checked(
    client: BatchClient, make_job: Callable[..., str]
) -> None:
    pool = "prep-checks"
    client.create_pool({"id": pool, "vmSize": "local", "targetDedicatedNodes": 0})
    job = make_job(
        pool, jobPreparationTask={"commandLine": "true"}, jobReleaseTask={"commandLine": "true"}
    )
    for task_id, code in (
        ("jobpreparation", "TaskIdSameAsJobPreparationTask"),
        ("JobPreparation", "TaskIdSameAsJobPreparationTask"),
        ("jobrelease", "TaskIdSameAsJobReleaseTask"),
    ):
        with pytest.raises(BatchConflictError) as err:
            client.create_task(job, {"id": task_id, "commandLine": "true"})
        assert err.value.code == code
    named = make_job(pool, jobPreparationTask={"id": "setup", "commandLine": "true"})
    with pytest.raises(BatchConflictError) as err:
        client.create_task(named, {"id": "setup", "commandLine": "true"})
    assert err.value.code == "TaskIdSameAsJobPreparationTask"
    client.create_task(named, {"id": "jobpreparation", "commandLine": "true"})  # free here
    result = client.create_tasks(
        job,
        [{"id": "jobpreparation", "commandLine": "true"}, {"id": "fine", "commandLine": "true"}],
    )
    by_id = {r.task_id: r for r in result.result_values}
    assert by_id["jobpreparation"].error.code == "TaskIdSameAsJobPreparationTask"
    assert by_id["fine"].status == "success"

    with pytest.raises(BatchInvalidRequestError) as bad:
        client.create_job(
            {
                "id": "release-alone",
                "poolInfo": {"poolId": pool},
                "jobReleaseTask": {"commandLine": "true"},
            }
        )
    assert bad.value.code == "InvalidPropertyValue"
    assert not any(j.id == "release-alone" for j in client.list_jobs())
    plain = make_job(pool)
    with pytest.raises(BatchConflictError) as err:
        client.list_job_preparation_and_release_task_status(plain)
    assert err.value.code == "JobPreparationTaskNotSpecified"
    client.delete_pool(pool)


def test_preparation_reruns_after_a_reboot_unless_told_not_to(
    client: BatchClient, make_job: Callable[..., str], tmp_path: Path
) -> None:
    pool = "prep-reboot"
    (node,) = _pool(client, pool, 1)
    again, once = tmp_path / "again", tmp_path / "once"
    rerun = make_job(pool, jobPreparationTask={"commandLine": _sh(f"echo x >> {again}")})
    keep = make_job(
        pool,
        jobPreparationTask={
            "commandLine": _sh(f"echo x >> {once}"),
            "rerunOnNodeRebootAfterSuccess": False,
        },
    )
    for job in (rerun, keep):
        client.create_task(job, {"id": "before", "commandLine": "true"})
        wait_for_task(client, job, "before")
    before = client.get_node(pool, node)
    client.reboot_node(pool, node)
    wait_until(
        lambda: client.get_node(pool, node).last_boot_time > before.last_boot_time,
        timeout=30,
        message="node rebooted",
    )
    wait_for_nodes(client, pool, 1, timeout=30)
    for job in (rerun, keep):
        client.create_task(job, {"id": "after", "commandLine": "true"})
        assert wait_for_task(client, job, "after").execution_info.result == "success"
    assert (_lines(again), _lines(once)) == (["x", "x"], ["x"])
    client.delete_pool(pool)


def test_a_node_with_a_failed_preparation_serves_other_jobs_at_once(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    pool = "prep-hol"
    bad, good = _pool(client, pool, 2)
    job = make_job(
        pool, jobPreparationTask={"commandLine": _sh(f'[ "$AZ_BATCH_NODE_ID" != "{bad}" ]')}
    )
    client.create_tasks(
        job, [{"id": f"t{i}", "commandLine": gate_command(gate)} for i in range(12)]
    )

    def prep_failed_on_bad():
        found = {
            s.node_id: s.job_preparation_task_execution_info
            for s in client.list_job_preparation_and_release_task_status(job)
        }
        info = found.get(bad)
        return info is not None and info.result == "failure"

    wait_until(prep_failed_on_bad, timeout=30, message="preparation failed on one node")
    other = make_job(pool)
    client.create_task(other, {"id": "x", "commandLine": "true"})
    try:
        task = wait_for_task(client, other, "x", timeout=5)
        assert task.node_info.node_id == bad
    finally:
        gate.touch()
        client.wait_for_job(job, timeout=30)
        client.delete_pool(pool)
