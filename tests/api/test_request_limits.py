"""Request limits and strict types at the REST boundary, before the store is touched.

* a ``commandLine`` or environment value over its documented limit: 400 naming the property,
  nothing created;
* JSON nested deeper than ``MAX_JSON_DEPTH`` (or 100,000 deep): 400 ``InvalidRequestBody``, not a
  500 ``RecursionError``;
* a string where a number or boolean belongs (or a number where a string belongs): 400
  ``InvalidPropertyValue`` naming the property, instead of a quiet conversion;
* ``Content-MD5`` checked when sent: 400 ``Md5Mismatch``;
* the command line is split before the write transaction opens: while a 1 MiB command line is
  being checked, another connection takes SQLite's write lock and another account's write is
  answered.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from prefect_batch.api.context import MAX_JSON_DEPTH
from prefect_batch.core.commandline import MAX_COMMAND_LINE_LENGTH, MAX_ENVIRONMENT_VALUE_LENGTH
from prefect_batch.service.ops import tasks as task_ops
from tests.api.conftest import Server, running_server
from tests.api.test_auth import error, send


@pytest.fixture(scope="module")
def job(server: Server) -> str:
    pool = {"id": "limits-pool", "vmSize": "local", "targetDedicatedNodes": 0}
    assert send(server, "POST", "/pools", body=pool).status_code == 201
    body = {"id": "limits-job", "poolInfo": {"poolId": "limits-pool"}}
    assert send(server, "POST", "/jobs", body=body).status_code == 201
    return "limits-job"


def _task_missing(server: Server, job: str, task_id: str) -> bool:
    return send(server, "GET", f"/jobs/{job}/tasks/{task_id}").status_code == 404


def test_command_line_over_the_limit_names_the_property(server: Server, job: str) -> None:
    for size in (MAX_COMMAND_LINE_LENGTH + 1, 1024 * 1024):
        body = {"id": f"long-{size}", "commandLine": "x" * size}
        answer = send(server, "POST", f"/jobs/{job}/tasks", body=body)
        assert answer.status_code == 400, answer.text
        code, values = error(answer)
        assert (code, values["PropertyName"]) == ("InvalidPropertyValue", "commandLine")
        assert str(MAX_COMMAND_LINE_LENGTH) in values["Reason"]
        assert len(answer.content) < 2000  # the answer does not echo the megabyte
        assert _task_missing(server, job, f"long-{size}")


def test_command_line_at_the_limit_is_accepted(server: Server, job: str) -> None:
    word = "y" * (MAX_COMMAND_LINE_LENGTH - len("echo "))
    body = {"id": "at-limit", "commandLine": f"echo {word}"}
    assert send(server, "POST", f"/jobs/{job}/tasks", body=body).status_code == 201
    got = send(server, "GET", f"/jobs/{job}/tasks/at-limit").json()
    assert got["commandLine"] == f"echo {word}"


def test_environment_value_over_the_limit_names_the_property(server: Server, job: str) -> None:
    env = [{"name": "BIG", "value": "v" * (MAX_ENVIRONMENT_VALUE_LENGTH + 1)}]
    body = {"id": "big-env", "commandLine": "true", "environmentSettings": env}
    answer = send(server, "POST", f"/jobs/{job}/tasks", body=body)
    assert answer.status_code == 400
    code, values = error(answer)
    assert (code, values["PropertyName"]) == ("InvalidPropertyValue", "environmentSettings")
    assert "BIG" in values["Reason"]
    assert _task_missing(server, job, "big-env")
    # The same limit on a pool's start task, named by its path.
    pool = {
        "id": "big-env-pool",
        "vmSize": "local",
        "startTask": {"commandLine": "true", "environmentSettings": env},
    }
    answer = send(server, "POST", "/pools", body=pool)
    assert answer.status_code == 400
    assert error(answer)[1]["PropertyName"] == "startTask.environmentSettings"
    assert send(server, "GET", "/pools/big-env-pool").status_code == 404


def _nested(depth: int) -> bytes:
    return b'{"id": "deep", "metadata": ' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH, 100_000])
def test_deep_json_is_invalid_request_body(server: Server, depth: int) -> None:
    answer = send(server, "POST", "/pools", body=_nested(depth))
    assert answer.status_code == 400, answer.text
    code, values = error(answer)
    assert code == "InvalidRequestBody"
    assert f"more than {MAX_JSON_DEPTH} deep" in values["Reason"]
    assert send(server, "GET", "/pools/deep").status_code == 404


def test_shallow_json_still_reaches_validation(server: Server) -> None:
    # Depth within the limit: the body is parsed and the service names the bad property.
    answer = send(server, "POST", "/pools", body=_nested(MAX_JSON_DEPTH - 3))
    assert answer.status_code == 400
    assert error(answer)[0] != "InvalidRequestBody"


@pytest.mark.parametrize(
    ("path", "body", "prop"),
    [
        ("/pools", {"id": "s1", "vmSize": "local", "taskSlotsPerNode": "4"}, "taskSlotsPerNode"),
        (
            "/pools",
            {"id": "s2", "vmSize": "local", "targetDedicatedNodes": "1"},
            "targetDedicatedNodes",
        ),
        ("/pools", {"id": "s3", "vmSize": "local", "enableAutoScale": "false"}, "enableAutoScale"),
        ("/pools", {"id": "s4", "vmSize": "local", "taskSlotsPerNode": 2.0}, "taskSlotsPerNode"),
        ("/pools", {"id": 5, "vmSize": "local"}, "id"),
        (
            "/jobs",
            {"id": "s5", "poolInfo": {"poolId": "p"}, "usesTaskDependencies": "true"},
            "usesTaskDependencies",
        ),
        ("/jobs", {"id": "s6", "poolInfo": {"poolId": "p"}, "priority": "10"}, "priority"),
    ],
)
def test_strings_for_numbers_and_booleans_are_refused(
    server: Server, path: str, body: dict[str, Any], prop: str
) -> None:
    answer = send(server, "POST", path, body=body)
    assert answer.status_code == 400, answer.text
    code, values = error(answer)
    assert (code, values["PropertyName"]) == ("InvalidPropertyValue", prop)
    assert send(server, "GET", f"{path}/{body['id']}").status_code == 404


def test_strict_types_on_a_task(server: Server, job: str) -> None:
    body = {"id": "typed", "commandLine": "true", "constraints": {"maxTaskRetryCount": "2"}}
    answer = send(server, "POST", f"/jobs/{job}/tasks", body=body)
    assert answer.status_code == 400
    assert error(answer)[1]["PropertyName"] == "constraints.maxTaskRetryCount"
    # Typed values, ISO durations and enums as strings are what the wire format uses: accepted.
    body["constraints"] = {"maxTaskRetryCount": 2, "maxWallClockTime": "PT1H"}
    body["userIdentity"] = {"autoUser": {"elevationLevel": "nonadmin"}}
    assert send(server, "POST", f"/jobs/{job}/tasks", body=body).status_code == 201


def _md5(raw: bytes) -> str:
    return base64.b64encode(hashlib.md5(raw).digest()).decode()


def test_content_md5_is_verified(server: Server) -> None:
    raw = json.dumps({"id": "md5-pool", "vmSize": "local"}).encode()
    tampered = json.dumps({"id": "md5-other", "vmSize": "local"}).encode()
    answer = send(server, "POST", "/pools", body=tampered, headers={"Content-MD5": _md5(raw)})
    assert answer.status_code == 400
    code, values = error(answer)
    assert code == "Md5Mismatch"
    assert values["UserSpecifiedMd5"] == _md5(raw)
    assert values["ServerCalculatedMd5"] == _md5(tampered)
    assert send(server, "GET", "/pools/md5-other").status_code == 404
    answer = send(server, "POST", "/pools", body=raw, headers={"Content-MD5": "not base64!"})
    assert error(answer) == (
        "InvalidHeaderValue",
        {
            "HeaderName": "Content-MD5",
            "HeaderValue": "not base64!",
            "Reason": "not a base64 MD5 digest",
        },
    )
    answer = send(server, "POST", "/pools", body=raw, headers={"Content-MD5": _md5(raw)})
    assert answer.status_code == 201
    send(server, "DELETE", "/pools/md5-pool")


# -- the write lock -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("lockdb")
    with running_server(f"sqlite:///{directory / 'batch.db'}", directory / "home") as s:
        yield s


def test_command_line_is_checked_outside_the_write_transaction(
    sqlite_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a 1 MiB command line is split, the store's write lock is free for everyone else."""
    server = sqlite_server
    other = server.add_account("lockother")
    assert send(server, "POST", "/pools", body={"id": "lp", "vmSize": "local"}).status_code == 201
    assert (
        send(server, "POST", "/jobs", body={"id": "lj", "poolInfo": {"poolId": "lp"}}).status_code
        == 201
    )
    db = Path(str(server.store.engine.url.database))
    seen: dict[str, Any] = {}
    real_split = task_ops.split_command_line

    def split_while_probing(line: str, prop: str = "commandLine") -> list[str]:
        if len(line) > MAX_COMMAND_LINE_LENGTH:
            probe = sqlite3.connect(db, timeout=0)
            try:
                probe.execute("BEGIN IMMEDIATE")  # fails at once if a writer holds the lock
                probe.execute("ROLLBACK")
                seen["lock_free"] = True
            except sqlite3.OperationalError as exc:
                seen["lock_free"] = str(exc)
            finally:
                probe.close()
            # Another account's write, answered while this request is still being checked.
            writer = threading.Thread(
                target=lambda: seen.setdefault(
                    "other_write",
                    send(
                        server,
                        "POST",
                        "/pools",
                        account=other.name,
                        key=other.primary,
                        body={"id": "other-pool", "vmSize": "local"},
                    ).status_code,
                )
            )
            writer.start()
            writer.join(30)
        return real_split(line, prop)

    monkeypatch.setattr(task_ops, "split_command_line", split_while_probing)
    body = {"id": "mib", "commandLine": "z" * (1024 * 1024)}
    answer = send(server, "POST", "/jobs/lj/tasks", body=body)
    assert answer.status_code == 400
    assert error(answer)[1]["PropertyName"] == "commandLine"
    assert seen == {"lock_free": True, "other_write": 201}
