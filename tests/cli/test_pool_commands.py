"""``prefect-batch pool ...``, ``node ...`` reads and the error path.

None of these commands starts an engine, so no node ever comes up here: a pool stays
``resizing`` with 0 current nodes, which the tests use to show that nothing was spawned.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from prefect_batch import BatchClient


def test_pool_create_json_prints_the_wire_pool(cli):
    result = cli(
        "pool",
        "create",
        "p1",
        "--nodes",
        "2",
        "--slots-per-node",
        "3",
        "--fill",
        "pack",
        "--metadata",
        "team=batch",
        "--metadata",
        "expr=a=b",
        "--json",
    )
    pool = json.loads(result.stdout)
    assert pool["id"] == "p1"
    assert pool["vmSize"] == "local"
    assert pool["targetDedicatedNodes"] == 2
    assert pool["taskSlotsPerNode"] == 3
    assert pool["taskSchedulingPolicy"] == {"nodeFillType": "pack"}
    assert pool["metadata"] == [
        {"name": "team", "value": "batch"},
        {"name": "expr", "value": "a=b"},
    ]
    # No engine ran: the pool asks for nodes but has none.
    assert pool["allocationState"] == "resizing"
    assert pool["currentDedicatedNodes"] == 0
    assert result.stderr == ""


def test_pool_list_and_show_with_and_without_json(cli):
    cli("pool", "create", "alpha", "--nodes", "1", "--json")
    cli("pool", "create", "beta", "--nodes", "3", "--slots-per-node", "2", "--json")

    listed = json.loads(cli("pool", "list", "--json").stdout)
    assert [p["id"] for p in listed] == ["alpha", "beta"]
    assert [p["targetDedicatedNodes"] for p in listed] == [1, 3]

    shown = json.loads(cli("pool", "show", "beta", "--json").stdout)
    assert shown["id"] == "beta"
    assert shown["taskSlotsPerNode"] == 2
    assert shown == listed[1]

    table = cli("pool", "list").stdout
    alpha_row = next(line for line in table.splitlines() if " alpha " in line)
    assert "0/1" in alpha_row and "resizing" in alpha_row
    beta_row = next(line for line in table.splitlines() if " beta " in line)
    assert "0/3" in beta_row

    detail = cli("pool", "show", "alpha").stdout
    assert "targetDedicatedNodes" in detail
    assert "taskSchedulingPolicy.nodeFillType" in detail
    assert "spread" in detail
    # The tables are for people: not JSON.
    assert not detail.lstrip().startswith("{")


def test_pool_create_from_file_with_overrides(cli, tmp_path: Path):
    body = {
        "id": "from-file",
        "vmSize": "local",
        "targetDedicatedNodes": 4,
        "taskSlotsPerNode": 2,
        "metadata": [{"name": "origin", "value": "file"}],
    }
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(body))
    pool = json.loads(cli("pool", "create", "--file", str(path), "--nodes", "1", "--json").stdout)
    assert pool["id"] == "from-file"
    assert pool["targetDedicatedNodes"] == 1  # the option wins over the file
    assert pool["taskSlotsPerNode"] == 2
    assert pool["metadata"] == [{"name": "origin", "value": "file"}]


def test_show_missing_pool_is_an_error_without_traceback(cli):
    result = cli("pool", "show", "missing", expect=1)
    assert result.stdout == ""
    assert result.stderr.startswith("Error PoolNotFound: ")
    assert "missing" in result.stderr
    assert "PoolId: missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_duplicate_pool_and_invalid_values_are_service_errors(cli):
    cli("pool", "create", "dup", "--json")
    result = cli("pool", "create", "DUP", "--json", expect=1)
    assert result.stderr.startswith("Error PoolExists: ")
    assert result.stdout == ""

    result = cli("pool", "create", "bad id!", expect=1)
    assert result.stderr.startswith("Error InvalidPropertyValue: ")


def test_bad_input_is_a_usage_error(cli, tmp_path: Path):
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    result = cli("pool", "create", "--file", str(broken), expect=2)
    message = re.sub(r"[\s│]+", " ", result.stderr)  # unwrap typer's error panel
    assert "broken.json is not JSON" in message
    assert cli("pool", "create", "p", "--metadata", "novalue", expect=2).exit_code == 2


def test_resize_stop_resize_and_delete(cli, home: Path):
    cli("pool", "create", "p", "--nodes", "1", "--json")
    # Without an engine the resize to 1 node never settles, so a second resize is refused.
    result = cli("pool", "resize", "p", "--nodes", "3", expect=1)
    assert result.stderr.startswith("Error PoolBeingResized: ")

    stopped = json.loads(cli("pool", "stop-resize", "p", "--json").stdout)
    assert stopped["allocationState"] == "steady"
    assert stopped["targetDedicatedNodes"] == 0  # keeps the nodes it has: none

    resized = json.loads(
        cli("pool", "resize", "p", "--nodes", "3", "--deallocation", "terminate", "--json").stdout
    )
    assert resized["targetDedicatedNodes"] == 3
    assert resized["allocationState"] == "resizing"

    assert json.loads(cli("pool", "delete", "p", "--json").stdout) == {"id": "p", "deleted": True}
    with BatchClient(home=home, engine=False) as client:
        assert not client.pool_exists("p")


def test_pool_images_and_empty_node_list(cli):
    images = json.loads(cli("pool", "images", "--json").stdout)
    assert [i["nodeAgentSKUId"] for i in images] == ["batch.node.local"]
    assert "batch.node.local" in cli("pool", "images").stdout

    cli("pool", "create", "p", "--nodes", "2", "--json")
    assert json.loads(cli("pool", "nodes", "p", "--json").stdout) == []
    assert json.loads(cli("node", "list", "p", "--json").stdout) == []
    missing = cli("node", "show", "p", "tvmps_nope", expect=1)
    assert missing.stderr.startswith("Error NodeNotFound: ")


def test_pool_autoscale_enable_evaluate_disable(cli, tmp_path: Path):
    cli("pool", "create", "p", "--nodes", "0", "--json")
    formula = tmp_path / "formula.txt"
    formula.write_text("extra = 2;\n$TargetDedicatedNodes = $CurrentDedicatedNodes + extra;\n")
    enabled = json.loads(
        cli(
            "pool",
            "autoscale",
            "enable",
            "p",
            "--formula-file",
            str(formula),
            "--interval",
            "60",
            "--json",
        ).stdout
    )
    assert enabled["enableAutoScale"] is True
    assert enabled["autoScaleFormula"] == formula.read_text()
    assert enabled["autoScaleEvaluationInterval"] == "PT1M"

    run = json.loads(
        cli(
            "pool",
            "autoscale",
            "evaluate",
            "p",
            "--formula",
            "$TargetDedicatedNodes = 3;",
            "--json",
        ).stdout
    )
    assert run["results"] == "$TargetDedicatedNodes=3;$NodeDeallocationOption=requeue"
    table = cli("pool", "autoscale", "evaluate", "p", "--formula-file", str(formula)).stdout
    assert "$TargetDedicatedNodes" in table and "$extra" in table

    # An evaluation that fails prints why and exits 1; a bad formula names line and column.
    starved = cli(
        "pool",
        "autoscale",
        "evaluate",
        "p",
        "--formula",
        "$TargetDedicatedNodes = avg($ActiveTasks.GetSample(TimeInterval_Hour, 50));",
        expect=1,
    )
    assert starved.stderr.startswith("Error InsufficientSampleData: ")
    assert "Message: Line 1, Col " in starved.stderr
    bad = cli("pool", "autoscale", "enable", "p", "--formula", "$x = ;", expect=1)
    assert bad.stderr.startswith("Error AutoScalingFormulaSyntaxError: ")
    assert "Line: 1" in bad.stderr

    resize = cli("pool", "resize", "p", "--nodes", "1", expect=1)
    assert resize.stderr.startswith("Error OperationInvalidForCurrentState: ")
    disabled = json.loads(cli("pool", "autoscale", "disable", "p", "--json").stdout)
    assert disabled["enableAutoScale"] is False
    assert "autoScaleFormula" not in disabled
