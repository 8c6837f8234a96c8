"""A short run of the fault suite (bench/faults.py) on every CI run: 3 rounds of ``kill -9`` of
the server mid-job, ``kill -9`` of one node agent mid-job, the server's PostgreSQL (a private
cluster of the test's own) stopped for 3 s mid-job, and an SSH pool of 3 loopback hosts
(private sshd) where one host's sshd crashes and another host is lost whole, each for 3 s.
Nothing accepted may be lost, no task may run again without its requeue or retry counted,
nothing of a killed server may be left running, and requests during the outage answer 503
``ServerBusy``. (The 20 rounds and the two servers on one database: ``python bench/faults.py``;
tests/api/test_restart.py has the two servers too.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench import faults, load  # noqa: E402
from prefect_batch.testing.postgres import PrivatePostgres  # noqa: E402
from prefect_batch.testing.sshd import sshd_available  # noqa: E402

pytestmark = pytest.mark.faults


def _passed(outcome: faults.Outcome) -> None:
    faults.report(outcome)
    assert outcome.ok, outcome.failures
    assert outcome.accepted > 0
    assert outcome.completed == outcome.accepted
    assert (outcome.lost, outcome.uncounted) == (0, 0)
    assert outcome.notes["orphans"] == 0


def test_server_killed_three_rounds_loses_nothing(tmp_path: Path) -> None:
    _passed(faults.server_kills(tmp_path, rounds=3, per_round=12, seed=16))


def test_node_agent_killed_loses_nothing(tmp_path: Path) -> None:
    _passed(faults.agent_kill(tmp_path, tasks=24))


def test_store_stopped_mid_job_answers_503_and_loses_nothing(tmp_path: Path) -> None:
    pg = PrivatePostgres()
    try:
        pg.start()
        outcome = faults.store_outage(tmp_path, pg, tasks=24, outage_seconds=3)
    finally:
        pg.close()
    _passed(outcome)
    assert set(outcome.notes["answers"].split(",")) == {outcome.notes["answers"]}
    assert outcome.notes["answers"].startswith("503 ServerBusy:")


@pytest.mark.skipif(not sshd_available(), reason="needs openssh-server; .ci/run installs it")
def test_ssh_host_sshd_killed_and_host_lost_lose_nothing(tmp_path: Path) -> None:
    outcome = faults.ssh_host_loss(tmp_path, tasks=24, down_seconds=3)
    _passed(outcome)
    assert outcome.notes["crash_running"] >= 1 and outcome.notes["lost_running"] >= 1
    # The lost host's tasks in flight died with it: requeued, each counted.
    assert outcome.requeues >= 1
    assert "nodes" in outcome.notes  # the scenario waited for the 3 nodes idle or running


def test_four_clients_reading_tasks_while_tasks_run_see_no_error(tmp_path: Path) -> None:
    """bench/load.py at a small N: 4 SDK clients x 60 get_task/list_tasks while 60 tasks run."""
    result = load.run_load(tmp_path, clients=4, requests=60, tasks=60, timeout=300)
    load.report(result)
    assert result.errors == {}
    assert result.server_errors == 0
    assert result.responses_logged >= 240  # the 5xx count sees every response the SDK got
    assert [len(result.latencies[k]) for k in load.KINDS] == [120, 120]
    assert result.completed_after == 60
    assert result.rss_before > 0 and result.rss_after > 0


def test_the_suite_refuses_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--only", "xz"], ["--rounds", "0"], ["--outage-seconds", "-1"]):
        with pytest.raises(SystemExit) as info:
            faults.main(argv)
        assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--only takes letters of 'abcdef'" in err
    assert "--rounds must be between 1 and 10000" in err
