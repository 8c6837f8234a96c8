"""``prefect-batch schedule ...``: create, list, show, jobs, disable, enable, terminate, delete.

The commands only read and write the database; the schedule's job is created by an engine the
test runs in-process for a moment (its pool does not exist, so no node is started).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect_batch import BatchClient
from prefect_batch.testing import wait_until


def test_schedule_commands(cli, home: Path, tmp_path: Path) -> None:
    created = json.loads(
        cli(
            "schedule",
            "create",
            "nightly",
            "--pool",
            "nowhere",
            "--every",
            "3600",
            "--start-window",
            "PT5M",
            "--not-after",
            "2100-01-01T00:00:00",
            "--job-manager",
            "python run.py",
            "--priority",
            "5",
            "--json",
        ).stdout
    )
    assert created["id"] == "nightly"
    assert created["state"] == "active"
    assert created["schedule"] == {
        "doNotRunAfter": "2100-01-01T00:00:00Z",
        "startWindow": "PT5M",
        "recurrenceInterval": "PT1H",
    }
    assert created["jobSpecification"] == {
        "priority": 5,
        "jobManagerTask": {"id": "jobmanager", "commandLine": "python run.py"},
        "poolInfo": {"poolId": "nowhere"},
    }

    listed = cli("schedule", "list").stdout
    assert "nightly" in listed and "PT1H" in listed
    assert [s["id"] for s in json.loads(cli("schedule", "list", "--json").stdout)] == ["nightly"]

    with BatchClient(home=home, engine=True) as client:
        wait_until(
            lambda: client.list_jobs_from_schedule("nightly"),
            timeout=30,
            message="the first scheduled job",
        )
    jobs = json.loads(cli("schedule", "jobs", "nightly", "--json").stdout)
    assert [j["id"] for j in jobs] == ["nightly:job-1"]
    shown = cli("schedule", "show", "nightly").stdout
    assert "nightly:job-1" in shown and "executionInfo.recentJob.id" in shown

    assert json.loads(cli("schedule", "disable", "nightly", "--json").stdout)["state"] == (
        "disabled"
    )
    failed = cli("schedule", "disable", "nightly", expect=1)
    assert "Error JobScheduleDisabled" in failed.stderr
    assert json.loads(cli("schedule", "enable", "nightly", "--json").stdout)["state"] == "active"
    ended = json.loads(cli("schedule", "terminate", "nightly", "--json").stdout)
    assert ended["state"] == "completed"
    assert json.loads(cli("schedule", "delete", "nightly", "--json").stdout) == {
        "id": "nightly",
        "deleted": True,
    }
    missing = cli("schedule", "show", "nightly", expect=1)
    assert "Error JobScheduleNotFound" in missing.stderr


def test_schedule_create_refuses_bad_input(cli, tmp_path: Path) -> None:
    failed = cli("schedule", "create", "s", "--pool", "p", "--every", "0.5", expect=1)
    assert "Error InvalidPropertyValue" in failed.stderr
    assert "schedule.recurrenceInterval" in failed.stderr
    failed = cli("schedule", "create", "s", expect=2)
    assert "--pool" in failed.stderr
    failed = cli("schedule", "create", "s", "--pool", "p", "--not-before", "soon", expect=2)
    assert "--not-before" in failed.stderr
    body = tmp_path / "schedule.json"
    body.write_text(
        json.dumps(
            {
                "id": "from-file",
                "schedule": {"recurrenceInterval": "PT1M"},
                "jobSpecification": {"poolInfo": {"poolId": "p"}},
            }
        )
    )
    made = json.loads(cli("schedule", "create", "--file", str(body), "--json").stdout)
    assert made["schedule"] == {"recurrenceInterval": "PT1M"}
    assert json.loads(cli("schedule", "list", "--json").stdout)[0]["id"] == "from-file"


def test_schedule_with_a_shared_auto_pool(cli) -> None:
    created = json.loads(
        cli(
            "schedule",
            "create",
            "shared",
            "--auto-pool",
            "0",
            "--auto-pool-lifetime",
            "jobschedule",
            "--keep-alive",
            "--json",
        ).stdout
    )
    spec = created["jobSpecification"]["poolInfo"]["autoPoolSpecification"]
    assert spec["poolLifetimeOption"] == "jobschedule"
    assert spec["keepAlive"] is True
    bad = cli("schedule", "create", "b", "--auto-pool", "1", "--auto-pool-lifetime", "x", expect=2)
    assert "--auto-pool-lifetime" in bad.stderr
