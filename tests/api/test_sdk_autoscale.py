"""Autoscale through the server: the official azure-batch SDK and ``BatchClient(url=...)``.

Create an autoscale pool, watch its formula size it, evaluate formulas (results, evaluation
errors, syntax errors), change the formula, see resize refused, and disable it.
"""

from __future__ import annotations

import datetime as dt

import pytest
from azure.batch import models
from azure.core.exceptions import HttpResponseError, ResourceExistsError

from prefect_batch import BatchClient, BatchConflictError, BatchInvalidRequestError
from tests.api.conftest import Server, wait_for

POOL = "pool-autoscale"


def _nodes(sdk, count: int):
    def probe():
        pool = sdk.get_pool(POOL)
        nodes = list(sdk.list_nodes(POOL))
        steady = pool.allocation_state == models.AllocationState.STEADY
        return pool if steady and len(nodes) == count else None

    return wait_for(probe)


def test_autoscale_with_the_sdk(server: Server, sdk) -> None:
    sdk.create_pool(
        models.BatchPoolCreateOptions(
            id=POOL,
            vm_size="local",
            enable_auto_scale=True,
            auto_scale_formula="$TargetDedicatedNodes = 1;",
            auto_scale_evaluation_interval=dt.timedelta(seconds=1),
        )
    )
    pool = sdk.get_pool(POOL)
    assert pool.enable_auto_scale is True
    assert pool.auto_scale_formula == "$TargetDedicatedNodes = 1;"
    assert pool.auto_scale_evaluation_interval == dt.timedelta(seconds=1)
    pool = _nodes(sdk, 1)
    assert pool.target_dedicated_nodes == 1
    assert isinstance(pool.auto_scale_run, models.AutoScaleRun)
    assert pool.auto_scale_run.results == "$TargetDedicatedNodes=1;$NodeDeallocationOption=requeue"
    assert isinstance(pool.auto_scale_run.timestamp, dt.datetime)

    run = sdk.evaluate_pool_auto_scale(
        POOL,
        models.BatchPoolEvaluateAutoScaleOptions(
            auto_scale_formula=(
                "extra = 1; $TargetDedicatedNodes = $CurrentDedicatedNodes + extra;"
                "$NodeDeallocationOption = taskcompletion;"
            )
        ),
    )
    assert isinstance(run, models.AutoScaleRun)
    assert run.results == (
        "$TargetDedicatedNodes=2;$NodeDeallocationOption=taskcompletion;$extra=1"
    )
    assert run.error is None
    assert sdk.get_pool(POOL).target_dedicated_nodes == 1  # evaluating applies nothing

    run = sdk.evaluate_pool_auto_scale(
        POOL,
        models.BatchPoolEvaluateAutoScaleOptions(
            auto_scale_formula=(
                "$TargetDedicatedNodes = avg($CPUPercent.GetSample(TimeInterval_Hour, 90));"
            )
        ),
    )
    assert run.error.code == "InsufficientSampleData"
    assert run.error.error_values[0].name == "Message"
    assert "$CPUPercent wanted 90%" in run.error.error_values[0].value

    with pytest.raises(HttpResponseError) as info:
        sdk.evaluate_pool_auto_scale(
            POOL, models.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$x = (1;")
        )
    assert info.value.status_code == 400
    assert info.value.error.code == "AutoScalingFormulaSyntaxError"
    assert ("Line", "1") in {(d.code, d.message) for d in info.value.error.details}

    with pytest.raises(ResourceExistsError) as info:
        sdk.begin_resize_pool(POOL, models.BatchPoolResizeOptions(target_dedicated_nodes=3))
    assert info.value.status_code == 409

    sdk.enable_pool_auto_scale(
        POOL,
        models.BatchPoolEnableAutoScaleOptions(auto_scale_formula="$TargetDedicatedNodes = 2;"),
    )
    pool = _nodes(sdk, 2)
    assert pool.auto_scale_formula == "$TargetDedicatedNodes = 2;"
    assert pool.auto_scale_evaluation_interval == dt.timedelta(seconds=1)

    sdk.disable_pool_auto_scale(POOL)
    pool = sdk.get_pool(POOL)
    assert not pool.enable_auto_scale
    assert pool.auto_scale_formula is None and pool.auto_scale_run is None
    assert pool.target_dedicated_nodes == 2
    sdk.begin_resize_pool(
        POOL, models.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=1
    ).result(timeout=60)
    _nodes(sdk, 1)
    sdk.begin_delete_pool(POOL, polling_interval=1).result(timeout=60)


def test_autoscale_with_the_python_client(server: Server) -> None:
    with BatchClient(server.account.name, url=server.url, account_key=server.account.primary) as c:
        c.create_pool({"id": "rscale", "vmSize": "local", "targetDedicatedNodes": 0})
        with pytest.raises(BatchConflictError):
            c.evaluate_pool_auto_scale("rscale", "$TargetDedicatedNodes = 1;")
        c.enable_pool_auto_scale(
            "rscale",
            {
                "autoScaleFormula": "$TargetDedicatedNodes = 0;",
                "autoScaleEvaluationInterval": "PT1H",
            },
        )
        run = c.evaluate_pool_auto_scale("rscale", "$TargetDedicatedNodes = 3;")
        assert run.results == "$TargetDedicatedNodes=3;$NodeDeallocationOption=requeue"
        with pytest.raises(BatchInvalidRequestError) as err:
            c.enable_pool_auto_scale("rscale", {"autoScaleFormula": "$TargetDedicatedNodes = ;"})
        assert err.value.code == "AutoScalingFormulaSyntaxError"
        c.disable_pool_auto_scale("rscale")
        assert c.get_pool("rscale").enable_auto_scale is False
        c.delete_pool("rscale")
