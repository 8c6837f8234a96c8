"""Autoscale pools: formulas sized by the engine from samples, and the operations around them.

The module's client samples every second, so a formula over a 10-second window sees its data
within seconds; evaluation intervals are 1-2 seconds (any interval of at least 1 s is accepted).
Waits are on states, with deadlines, never on sleeps.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select, update

from prefect_batch import (
    BatchClient,
    BatchConflictError,
    BatchInvalidRequestError,
)
from prefect_batch.service import BatchService
from prefect_batch.service.engine import Engine
from prefect_batch.service.ops.autoscale import MAX_RUNS_PER_POOL, record_run
from prefect_batch.service.rows.lifecycle import pool_key
from prefect_batch.service.rows.samples import (
    SAMPLE_RETENTION_SECONDS,
    TaskSampler,
    load_series,
    store_samples,
    trim_samples,
)
from prefect_batch.settings import BatchSettings
from prefect_batch.store.schema import autoscale_runs, jobs, pool_samples, pools
from prefect_batch.testing import (
    embedded_client,
    gate_command,
    wait_for_nodes,
    wait_until,
)

from .test_lifecycle_states import StateLog, state_log_fixture

PENDING_TASKS_FORMULA = """
// Azure's pending-tasks example, on a 10-second window.
startingNumberOfVMs = 0;
maxNumberofVMs = 4;
pendingTaskSamplePercent = $PendingTasks.GetSamplePercent(10 * TimeInterval_Second);
pendingTaskSamples = pendingTaskSamplePercent < 70 ? startingNumberOfVMs :
    avg($PendingTasks.GetSample(10 * TimeInterval_Second));
$TargetDedicatedNodes = min(maxNumberofVMs, pendingTaskSamples);
$NodeDeallocationOption = taskcompletion;
"""

TIME_FORMULA = """$curTime = time();
$workHours = $curTime.hour >= 8 && $curTime.hour < 18;
$isWeekday = $curTime.weekday >= 1 && $curTime.weekday <= 5;
$isWorkingWeekdayHour = $workHours && $isWeekday;
$TargetDedicatedNodes = $isWorkingWeekdayHour ? 20:10;"""

# Azure's documented evaluation of the time-based example, a Thursday evening.
DOCUMENTED_TIME = datetime(2016, 10, 13, 19, 18, 47, 805000, tzinfo=timezone.utc)
DOCUMENTED_RESULTS = (
    "$TargetDedicatedNodes=10;$NodeDeallocationOption=requeue;"
    "$curTime=2016-10-13T19:18:47.805Z;$isWeekday=1;$isWorkingWeekdayHour=0;$workHours=0"
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BatchClient]:
    """The module's embedded client, sampling pools every second."""
    with embedded_client(tmp_path_factory.mktemp("home"), autoscale_sample_interval_seconds=1) as c:
        yield c


state_log = state_log_fixture()


def _autoscale_pool(client: BatchClient, pool: str, formula: str, interval: str = "PT1S") -> None:
    client.create_pool(
        {
            "id": pool,
            "vmSize": "local",
            "enableAutoScale": True,
            "autoScaleFormula": formula,
            "autoScaleEvaluationInterval": interval,
        }
    )


def _last_run(client: BatchClient, pool: str) -> Any:
    return wait_until(
        lambda: client.get_pool(pool).auto_scale_run, timeout=30, message=f"{pool} evaluated"
    )


def _results(run: Any) -> dict[str, str]:
    return dict(item.split("=", 1) for item in run.results.split(";"))


def _pool_pk(client: BatchClient, pool: str) -> int:
    with client.store.read() as conn:
        return conn.execute(select(pools.c.pk).where(pools.c.id == pool)).scalar_one()


# -- the engine sizes pools by formula ----------------------------------------------------------


def test_pending_tasks_grow_the_pool_and_it_shrinks_when_they_are_done(
    client: BatchClient, make_job: Callable[..., str], state_log: StateLog
) -> None:
    pool = "pending"
    _autoscale_pool(client, pool, PENDING_TASKS_FORMULA, "PT2S")
    created = client.get_pool(pool)
    assert created.enable_auto_scale is True
    assert created.auto_scale_evaluation_interval.total_seconds() == 2
    assert created.target_dedicated_nodes == 0
    # The first evaluation comes right away, before any sample: the formula's guard holds.
    first = _results(_last_run(client, pool))
    assert first["$TargetDedicatedNodes"] == "0"
    assert first["$NodeDeallocationOption"] == "taskcompletion"

    job = make_job(pool)
    client.create_tasks(
        job, [{"id": f"t{i}", "commandLine": "/bin/sh -c 'sleep 0.5'"} for i in range(40)]
    )
    wait_until(
        lambda: client.get_pool(pool).target_dedicated_nodes == 4,
        timeout=60,
        message="target 4 from 40 pending tasks",
    )
    wait_until(
        lambda: client.get_pool(pool).current_dedicated_nodes == 4,
        timeout=60,
        message="4 nodes",
    )
    grown = client.get_pool(pool)
    assert _results(grown.auto_scale_run)["$TargetDedicatedNodes"] == "4"
    assert float(_results(grown.auto_scale_run)["$pendingTaskSamples"]) >= 4

    wait_until(
        lambda: client.get_job_task_counts(job).task_counts.succeeded == 40,
        timeout=90,
        message="40 tasks succeeded",
    )
    # Nothing pending for a whole window: the formula brings the pool back to 0 nodes.
    wait_for_nodes(client, pool, 0, timeout=60)
    shrunk = client.get_pool(pool)
    assert shrunk.target_dedicated_nodes == 0
    assert _results(shrunk.auto_scale_run)["$TargetDedicatedNodes"] == "0"
    assert client.get_job_task_counts(job).task_counts.failed == 0
    with client.store.read() as conn:
        kinds = conn.execute(
            select(autoscale_runs.c.kind).where(autoscale_runs.c.pool_pk == _pool_pk(client, pool))
        ).scalars()
        assert set(kinds) == {"periodic"}
    client.delete_pool(pool)


def test_samples_count_tasks_and_nodes(
    client: BatchClient, make_job: Callable[..., str], gate: Path
) -> None:
    pool = "sampled"
    _autoscale_pool(client, pool, "$TargetDedicatedNodes = 1;", "PT1H")
    wait_for_nodes(client, pool, 1, timeout=30)
    job = make_job(pool)
    client.create_task(job, {"id": "held", "commandLine": gate_command(gate)})
    probe = (
        "running = val($RunningTasks.GetSample(1), 0);"
        "nodes = val($SampleNodeCount.GetSample(1), 0);"
        "current = val($CurrentDedicatedNodes.GetSample(1), 0);"
        "cpu = val($CPUPercent.GetSample(1), 0);"
        "memory = val($MemoryBytes.GetSample(1), 0);"
        "done = sum($SucceededTasks.GetSample(TimeInterval_Minute));"
        "$TargetDedicatedNodes = $CurrentDedicatedNodes;"
    )

    def sample_with(key: str, wanted: str) -> dict[str, str] | None:
        run = client.evaluate_pool_auto_scale(pool, {"autoScaleFormula": probe})
        if run.error is not None:
            return None  # no sample of every metric yet
        values = _results(run)
        return values if values[key] == wanted else None

    seen = wait_until(lambda: sample_with("$running", "1"), timeout=30, message="running 1")
    assert seen["$nodes"] == "1" and seen["$current"] == "1"
    assert 0 <= float(seen["$cpu"]) <= 100
    assert float(seen["$memory"]) > 0
    assert seen["$TargetDedicatedNodes"] == "1"  # a dry run: the pool is not changed
    (gate).touch()
    wait_until(lambda: sample_with("$done", "1"), timeout=30, message="one success sampled")
    assert sample_with("$running", "0")
    with client.store.read() as conn:
        kinds = conn.execute(
            select(autoscale_runs.c.kind).where(autoscale_runs.c.pool_pk == _pool_pk(client, pool))
        ).scalars()
        assert "evaluate" in set(kinds)
    client.delete_pool(pool)


def test_a_failed_evaluation_leaves_the_pool_as_it_is(client: BatchClient) -> None:
    pool = "starved"
    # A day of samples at 100%: never there, so every evaluation fails.
    _autoscale_pool(
        client,
        pool,
        "$TargetDedicatedNodes = 3 + avg($PendingTasks.GetSample(TimeInterval_Day, 100));",
    )
    run = _last_run(client, pool)
    assert run.results is None
    assert run.error.code == "InsufficientSampleData"
    assert run.error.message == "Autoscale evaluation failed due to insufficient sample data"
    (message,) = run.error.error_values
    assert message.name == "Message"
    assert message.value.startswith("Line 1, Col ")
    assert "$PendingTasks wanted 100%" in message.value
    after = client.get_pool(pool)
    assert after.target_dedicated_nodes == 0 and after.allocation_state == "steady"
    client.delete_pool(pool)


def test_disable_keeps_the_current_size_and_resize_works_again(client: BatchClient) -> None:
    pool = "fixed-later"
    _autoscale_pool(client, pool, "$TargetDedicatedNodes = 2;")
    wait_for_nodes(client, pool, 2, timeout=30)
    with pytest.raises(BatchConflictError) as err:
        client.resize_pool(pool, {"targetDedicatedNodes": 1})
    assert err.value.code == "OperationInvalidForCurrentState"
    with pytest.raises(BatchConflictError):
        client.stop_pool_resize(pool)

    client.disable_pool_auto_scale(pool)
    after = client.get_pool(pool)
    assert after.enable_auto_scale is False
    assert after.auto_scale_formula is None and after.auto_scale_run is None
    assert after.target_dedicated_nodes == 2
    with client.store.read() as conn:
        next_run = conn.execute(
            select(pools.c.auto_scale_next).where(pools.c.id == pool)
        ).scalar_one()
    assert next_run is None  # no more evaluations
    assert len(wait_for_nodes(client, pool, 2, timeout=30)) == 2
    client.disable_pool_auto_scale(pool)  # already off: nothing to do

    client.resize_pool(pool, {"targetDedicatedNodes": 1})
    wait_for_nodes(client, pool, 1, timeout=30)
    client.delete_pool(pool)


def test_enable_on_a_fixed_pool_and_change_the_formula(client: BatchClient) -> None:
    pool = "converted"
    client.create_pool({"id": pool, "vmSize": "local", "targetDedicatedNodes": 1})
    wait_for_nodes(client, pool, 1, timeout=30)
    with pytest.raises(BatchInvalidRequestError) as err:
        client.enable_pool_auto_scale(pool, {"autoScaleEvaluationInterval": "PT1S"})
    assert err.value.code == "InvalidAutoScalingSettings"

    client.enable_pool_auto_scale(
        pool,
        {"autoScaleFormula": "$TargetDedicatedNodes = 2;", "autoScaleEvaluationInterval": "PT1S"},
    )
    wait_for_nodes(client, pool, 2, timeout=30)
    # A new formula alone keeps the interval, and runs at once.
    client.enable_pool_auto_scale(pool, {"autoScaleFormula": "$TargetDedicatedNodes = 0;"})
    changed = client.get_pool(pool)
    assert changed.auto_scale_formula == "$TargetDedicatedNodes = 0;"
    assert changed.auto_scale_evaluation_interval.total_seconds() == 1
    wait_for_nodes(client, pool, 0, timeout=30)
    with pytest.raises(BatchInvalidRequestError) as err:
        client.enable_pool_auto_scale(pool, {})
    assert err.value.code == "InvalidAutoScalingSettings"
    client.delete_pool(pool)


# -- requests -------------------------------------------------------------------------------------


def test_evaluate_gives_the_documented_results_at_a_fixed_time(client: BatchClient) -> None:
    pool = "clocked"
    _autoscale_pool(client, pool, "$TargetDedicatedNodes = 0;", "PT1H")
    fixed = BatchService(
        client.store, client.account_name, clock=lambda: DOCUMENTED_TIME.timestamp()
    )
    run = fixed.evaluate_pool_auto_scale(pool, {"autoScaleFormula": TIME_FORMULA})
    assert run.results == DOCUMENTED_RESULTS
    assert run.error is None
    assert run.timestamp == DOCUMENTED_TIME
    assert run.to_wire()["results"] == DOCUMENTED_RESULTS
    # Monday 08:00 UTC is a working hour.
    monday = BatchService(
        client.store,
        client.account_name,
        clock=lambda: datetime(2016, 10, 17, 8, tzinfo=timezone.utc).timestamp(),
    )
    run = monday.evaluate_pool_auto_scale(
        pool, {"autoScaleFormula": TIME_FORMULA + "\n$NodeDeallocationOption = taskcompletion;"}
    )
    assert run.results.startswith(
        "$TargetDedicatedNodes=20;$NodeDeallocationOption=taskcompletion;"
    )
    # A dry run: the pool keeps its own formula and target.
    after = client.get_pool(pool)
    assert after.auto_scale_formula == "$TargetDedicatedNodes = 0;"
    assert after.target_dedicated_nodes == 0
    client.delete_pool(pool)


def test_bad_formulas_are_refused_naming_line_and_column(client: BatchClient) -> None:
    bad = "$TargetDedicatedNodes = 1;\n$x = min(1, ;"
    with pytest.raises(BatchInvalidRequestError) as err:
        _autoscale_pool(client, "never", bad)
    assert err.value.code == "AutoScalingFormulaSyntaxError"
    assert (err.value.values["Line"], err.value.values["Column"]) == ("2", "13")
    assert err.value.values["Message"].startswith("Line 2, Col 13: ")
    assert not client.pool_exists("never")

    pool = "kept"
    _autoscale_pool(client, pool, "$TargetDedicatedNodes = 0;", "PT1H")
    with pytest.raises(BatchInvalidRequestError) as err:
        client.enable_pool_auto_scale(pool, {"autoScaleFormula": "$TargetDedicatedNodes = $Nope;"})
    assert err.value.code == "AutoScalingFormulaSyntaxError"
    assert (err.value.values["Line"], err.value.values["Column"]) == ("1", "25")
    assert client.get_pool(pool).auto_scale_formula == "$TargetDedicatedNodes = 0;"
    with pytest.raises(BatchInvalidRequestError) as err:
        client.evaluate_pool_auto_scale(pool, {"autoScaleFormula": "$TargetDedicatedNodes = ;"})
    assert err.value.code == "AutoScalingFormulaSyntaxError"
    with pytest.raises(BatchInvalidRequestError) as err:
        client.evaluate_pool_auto_scale(pool, {"autoScaleFormula": "x = 1;" * 9000})
    assert err.value.code == "AutoScaleFormulaTooLong"
    client.delete_pool(pool)


@pytest.mark.parametrize(
    ("body", "code", "name"),
    [
        ({"enableAutoScale": True}, "InvalidAutoScalingSettings", "autoScaleFormula"),
        (
            {
                "enableAutoScale": True,
                "autoScaleFormula": "$TargetDedicatedNodes=1;",
                "targetDedicatedNodes": 1,
            },
            "InvalidAutoScalingSettings",
            "targetDedicatedNodes",
        ),
        (
            {"targetDedicatedNodes": 1, "autoScaleFormula": "$TargetDedicatedNodes=1;"},
            "InvalidAutoScalingSettings",
            "autoScaleFormula",
        ),
        (
            {
                "enableAutoScale": True,
                "autoScaleFormula": "$TargetDedicatedNodes=1;",
                "autoScaleEvaluationInterval": "PT0.5S",
            },
            "InvalidPropertyValue",
            "autoScaleEvaluationInterval",
        ),
        (
            {
                "enableAutoScale": True,
                "autoScaleFormula": "$TargetDedicatedNodes=1;",
                "autoScaleEvaluationInterval": "PT169H",
            },
            "InvalidPropertyValue",
            "autoScaleEvaluationInterval",
        ),
    ],
)
def test_create_checks_the_autoscale_settings(
    client: BatchClient, body: dict[str, Any], code: str, name: str
) -> None:
    with pytest.raises(BatchInvalidRequestError) as err:
        client.create_pool({"id": "unsettled", "vmSize": "local", **body})
    assert err.value.code == code
    assert err.value.values["PropertyName"] == name
    assert not client.pool_exists("unsettled")


def test_default_interval_is_fifteen_minutes(client: BatchClient) -> None:
    client.create_pool(
        {"id": "slow", "vmSize": "local", "enableAutoScale": True, "autoScaleFormula": "$x = 1;"}
    )
    pool = client.get_pool("slow")
    assert pool.auto_scale_evaluation_interval.total_seconds() == 900
    assert pool.to_wire()["autoScaleEvaluationInterval"] == "PT15M"
    client.delete_pool("slow")


def test_evaluate_needs_autoscale_enabled(client: BatchClient) -> None:
    client.create_pool({"id": "plain", "vmSize": "local", "targetDedicatedNodes": 0})
    with pytest.raises(BatchConflictError) as err:
        client.evaluate_pool_auto_scale("plain", "$TargetDedicatedNodes = 1;")
    assert err.value.code == "OperationInvalidForCurrentState"
    client.delete_pool("plain")


def test_enable_while_resizing_is_refused(client_factory: Callable[..., BatchClient]) -> None:
    # Without an engine a resize never ends.
    quiet = client_factory(engine=False)
    quiet.create_pool({"id": "busy", "vmSize": "local", "targetDedicatedNodes": 2})
    assert quiet.get_pool("busy").allocation_state == "resizing"
    formula = {"autoScaleFormula": "$TargetDedicatedNodes = 1;"}
    with pytest.raises(BatchConflictError) as err:
        quiet.enable_pool_auto_scale("busy", formula)
    assert err.value.code == "PoolBeingResized"
    assert quiet.get_pool("busy").enable_auto_scale is False
    quiet.stop_pool_resize("busy")
    quiet.enable_pool_auto_scale("busy", formula)
    assert quiet.get_pool("busy").enable_auto_scale is True
    # Without samples, a formula that needs them reports why.
    run = quiet.evaluate_pool_auto_scale(
        "busy", "$TargetDedicatedNodes = avg($CPUPercent.GetSample(TimeInterval_Minute * 10, 10));"
    )
    assert run.error.code == "InsufficientSampleData"
    assert run.error.error_values[0].value == (
        "Line 1, Col 41: Insufficient data from data set: $CPUPercent wanted 10%, received 0%"
    )


# -- records --------------------------------------------------------------------------------------


def test_runs_are_kept_bounded(client_factory: Callable[..., BatchClient]) -> None:
    quiet = client_factory(engine=False)
    _autoscale_pool(quiet, "recorded", "$TargetDedicatedNodes = 0;", "PT1H")
    pool_pk = _pool_pk(quiet, "recorded")
    with quiet.store.begin() as conn:
        for i in range(MAX_RUNS_PER_POOL + 20):
            record_run(conn, pool_pk, "periodic", "f", {"results": f"$x={i}"}, float(i))
    with quiet.store.read() as conn:
        kept = (
            conn.execute(
                select(autoscale_runs.c.results)
                .where(autoscale_runs.c.pool_pk == pool_pk)
                .order_by(autoscale_runs.c.pk)
            )
            .scalars()
            .all()
        )
    assert len(kept) == MAX_RUNS_PER_POOL
    assert kept[0] == "$x=20" and kept[-1] == f"$x={MAX_RUNS_PER_POOL + 19}"


def test_task_metrics_count_completions_between_samples(
    client_factory: Callable[..., BatchClient],
) -> None:
    quiet = client_factory(engine=False)
    sampler = TaskSampler()

    def sample(*pool_ids: str) -> dict[str, dict[str, float]]:
        with quiet.store.begin() as conn:
            rows = conn.execute(select(pools).where(pools.c.id.in_(pool_ids))).all()
            out = sampler.sample(
                conn,
                {r.pk: str(pool_key(r.account, r.id)) for r in rows},
                time.time(),
                {r.pk: r.creation_time for r in rows},
            )
            return {r.id: out[r.pk] for r in rows}

    def counters(job_id: str, succeeded: int, failed: int) -> None:
        with quiet.store.begin() as conn:
            conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(n_succeeded=succeeded, n_failed=failed)
            )

    quiet.create_pool({"id": "old", "vmSize": "local", "targetDedicatedNodes": 0})
    quiet.create_job({"id": "before", "poolInfo": {"poolId": "old"}})
    counters("before", 7, 0)
    first = sample("old")["old"]
    assert "$SucceededTasks" not in first  # no base to count from yet
    assert first["$ActiveTasks"] == first["$RunningTasks"] == 0

    quiet.create_job({"id": "new", "poolInfo": {"poolId": "old"}})
    quiet.create_tasks("new", [{"id": f"t{i}", "commandLine": "/bin/true"} for i in range(3)])
    counters("new", 2, 1)
    counters("before", 8, 0)
    second = sample("old")["old"]
    assert (second["$SucceededTasks"], second["$FailedTasks"]) == (3, 1)
    assert second["$ActiveTasks"] == second["$PendingTasks"] == 3  # queued, no node yet

    # A pool made since the previous sample: everything its jobs completed counts.
    quiet.create_pool({"id": "fresh", "vmSize": "local", "targetDedicatedNodes": 0})
    quiet.create_job({"id": "quick", "poolInfo": {"poolId": "fresh"}})
    counters("quick", 4, 0)
    third = sample("old", "fresh")
    assert third["fresh"]["$SucceededTasks"] == 4
    assert (third["old"]["$SucceededTasks"], third["old"]["$FailedTasks"]) == (0, 0)
    # A reactivated task lowers the failed count: that is not a completion.
    counters("new", 2, 0)
    assert sample("old", "fresh")["old"]["$FailedTasks"] == 0


def test_samples_older_than_the_retention_are_dropped(
    client_factory: Callable[..., BatchClient],
) -> None:
    quiet = client_factory(engine=False)
    _autoscale_pool(quiet, "history", "$TargetDedicatedNodes = 0;", "PT1H")
    pool_pk = _pool_pk(quiet, "history")
    now = 1_000_000.0
    with quiet.store.begin() as conn:
        for age in (SAMPLE_RETENTION_SECONDS + 60, 3600.0, 30.0):
            store_samples(conn, {pool_pk: {"$ActiveTasks": age}}, now - age, 30.0)
        # A few metrics are extracted by the database, many decoded here: the same series.
        for metrics in (
            ["$ActiveTasks", "$CPUPercent"],
            ["$ActiveTasks", "$CPUPercent", "$RunningTasks", "$DiskBytes", "$FailedTasks"],
        ):
            series, period = load_series(conn, pool_pk, now, metrics)
            assert series["$ActiveTasks"].values == (3600.0, 30.0)
            assert series["$ActiveTasks"].ticks == tuple(
                round((now - age) * 10_000_000) for age in (3600.0, 30.0)
            )
            assert len(series["$CPUPercent"]) == 0
            assert period == 30.0
        trim_samples(conn, [pool_pk], now)
        left = conn.execute(
            select(func.count()).select_from(pool_samples).where(pool_samples.c.pool_pk == pool_pk)
        ).scalar_one()
    assert left == 2
    quiet.delete_pool("history")
    with quiet.store.read() as conn:
        gone = conn.execute(
            select(func.count()).select_from(pool_samples).where(pool_samples.c.pool_pk == pool_pk)
        ).scalar_one()
    assert gone == 0  # the pool's samples go with it


def test_the_sample_interval_is_at_least_a_second(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        BatchSettings(home=tmp_path, autoscale_sample_interval_seconds=0.5)
    with embedded_client(tmp_path / "home", engine=False) as quiet:
        with pytest.raises(ValueError):
            Engine(quiet.store, {}, tmp_path / "nodes", autoscale_sample_seconds=0.5)
        engine = Engine(quiet.store, {}, tmp_path / "nodes", autoscale_sample_seconds=1)
        assert engine.autoscale_sample_seconds == 1.0
