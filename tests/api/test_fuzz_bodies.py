"""Fuzzing the REST request bodies of the main create and change operations.

Each operation starts from a valid body, which hypothesis mutates: fields dropped, replaced by
JSON of any type (nested lists and objects, huge and negative numbers, floats, strings where
numbers belong and the reverse), unknown fields added, or the whole body replaced. Every body is
sent, SharedKey-signed, to the app served in this process (uvicorn in a thread on 127.0.0.1,
``prefect_batch.testing.webapp``; Starlette's ``TestClient`` warns about its httpx, which this
suite treats as an error); without an engine, so nothing runs. For each answer:

* never a 5xx, and always an Azure-style JSON error body when rejected (``code``, ``message``);
* a rejected request leaves nothing behind: the listings of pools, jobs, the job's tasks and
  job schedules are the same before and after it;
* a task collection's per-task errors: the refused tasks do not exist.

Example counts are small (the whole module takes well under a minute) and ``derandomize`` makes
every run try the same bodies.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefect_batch.api import create_app
from prefect_batch.service.ops.accounts import AccountOperations
from prefect_batch.store import Store
from prefect_batch.testing.webapp import serve_app
from tests.api.conftest import signed_send

FUZZ = settings(
    max_examples=30,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

_ids = itertools.count()

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.sampled_from([0, -1, 2**31, 2**63, -(2**63) - 1, 10**30])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["", "1", "-1", "1e400", "PT1H", "P99999999D", "true", "null", "x" * 2000])
)
JSON = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
EXTRA_NAMES = st.sampled_from(["colour", "id", "value", "odata.metadata", "Id", ""]) | st.text(
    max_size=8
)


@st.composite
def mutated(draw: st.DrawFn, value: Any) -> Any:
    """``value`` changed in a few places (or not at all)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(JSON)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            what = draw(st.sampled_from(["keep", "keep", "keep", "dig", "drop", "replace"]))
            if what == "keep":
                out[key] = item
            elif what == "dig":
                out[key] = draw(mutated(item))
            elif what == "replace":
                out[key] = draw(JSON)
        if draw(st.integers(0, 4)) == 0:
            out.update(draw(st.dictionaries(EXTRA_NAMES, JSON, min_size=1, max_size=2)))
        return out
    if isinstance(value, list):
        items = [draw(mutated(item)) for item in value]
        if draw(st.integers(0, 4)) == 0:
            items.append(draw(JSON))
        return items
    return draw(JSON)


def task_body(n: int) -> dict[str, Any]:
    return {
        "id": f"t{n}",
        "commandLine": "/bin/true",
        "displayName": "a task",
        "constraints": {"maxTaskRetryCount": 1, "maxWallClockTime": "PT1M", "retentionTime": "P1D"},
        "environmentSettings": [{"name": "A", "value": "1"}],
        "exitConditions": {
            "exitCodes": [{"code": 3, "exitOptions": {"jobAction": "none"}}],
            "exitCodeRanges": [
                {"start": 4, "end": 9, "exitOptions": {"dependencyAction": "block"}}
            ],
            "default": {"dependencyAction": "satisfy"},
        },
        "dependsOn": {"taskIds": ["base"]},
        "requiredSlots": 1,
        "resourceFiles": [
            {"httpUrl": "http://127.0.0.1:9/x", "filePath": "in/x", "fileMode": "0644"}
        ],
        "outputFiles": [
            {
                "filePattern": "*.txt",
                "destination": {"container": {"containerUrl": "http://127.0.0.1:9/c"}},
                "uploadOptions": {"uploadCondition": "taskcompletion"},
            }
        ],
    }


START_TASK = {
    "commandLine": "/bin/true",
    "environmentSettings": [{"name": "B", "value": "2"}],
    "maxTaskRetryCount": 1,
    "waitForSuccess": True,
}


def pool_body(n: int) -> dict[str, Any]:
    return {
        "id": f"pool{n}",
        "vmSize": "local",
        "displayName": "a pool",
        "targetDedicatedNodes": 0,
        "targetLowPriorityNodes": 0,
        "taskSlotsPerNode": 2,
        "resizeTimeout": "PT15M",
        "taskSchedulingPolicy": {"nodeFillType": "pack"},
        "startTask": START_TASK,
        "metadata": [{"name": "m", "value": "v"}],
        "enableAutoScale": False,
    }


def job_body(n: int) -> dict[str, Any]:
    return {
        "id": f"job{n}",
        "displayName": "a job",
        "priority": 10,
        "maxParallelTasks": 4,
        "usesTaskDependencies": True,
        "constraints": {"maxWallClockTime": "PT1H", "maxTaskRetryCount": 1},
        "poolInfo": {"poolId": "p0"},
        "onAllTasksComplete": "noaction",
        "onTaskFailure": "noaction",
        "metadata": [{"name": "m", "value": "v"}],
    }


def schedule_body(n: int) -> dict[str, Any]:
    return {
        "id": f"sched{n}",
        "schedule": {
            "doNotRunUntil": "2100-01-01T00:00:00Z",
            "recurrenceInterval": "PT1H",
            "startWindow": "PT10M",
        },
        "jobSpecification": {
            "priority": 1,
            "poolInfo": {"poolId": "p0"},
            "constraints": {"maxTaskRetryCount": 0},
            "onAllTasksComplete": "terminatejob",
        },
        "metadata": [{"name": "m", "value": "v"}],
    }


# name -> (method, path, valid body for example n)
OPERATIONS: dict[str, tuple[str, str, Callable[[int], Any]]] = {
    "pool add": ("POST", "/pools", pool_body),
    "job add": ("POST", "/jobs", job_body),
    "task add": ("POST", "/jobs/j0/tasks", task_body),
    "add collection": (
        "POST",
        "/jobs/j0/addtaskcollection",
        lambda n: {"value": [task_body(n), {**task_body(n), "id": f"t{n}b"}]},
    ),
    "job schedule add": ("POST", "/jobschedules", schedule_body),
    "pool patch": (
        "PATCH",
        "/pools/p-patch",
        lambda n: {
            "startTask": START_TASK,
            "metadata": [{"name": "m", "value": str(n)}],
            "taskSchedulingPolicy": {"nodeFillType": "spread"},
        },
    ),
    "pool resize": (
        "POST",
        "/pools/p-resize/resize",
        lambda n: {
            "targetDedicatedNodes": n % 3,
            "targetLowPriorityNodes": 0,
            "resizeTimeout": "PT15M",
            "nodeDeallocationOption": "requeue",
        },
    ),
    "pool enableautoscale": (
        "POST",
        "/pools/p-auto/enableautoscale",
        lambda n: {
            "autoScaleFormula": f"$TargetDedicatedNodes = {n % 3};",
            "autoScaleEvaluationInterval": "PT5M",
        },
    ),
}


class App:
    """The app served in this process with one account, and signed requests to it."""

    def __init__(self, home: Path, stack: ExitStack) -> None:
        self.store = Store(f"sqlite:///{home / 'batch.db'}")
        stack.callback(self.store.dispose)
        self.account = AccountOperations(self.store).create("acct")
        url = stack.enter_context(serve_app(create_app(self.store, None, account_url=None)))
        self.http = stack.enter_context(httpx.Client(base_url=url, timeout=30))

    def send(self, method: str, path: str, body: Any = None) -> Any:
        return signed_send(
            self.http, method, path, account="acct", key=self.account.primary, body=body
        )

    def snapshot(self) -> dict[str, Any]:
        """Everything a request could have left behind, as listed by the API."""
        out = {}
        for path in ("/pools", "/jobs", "/jobs/j0/tasks", "/jobschedules"):
            got = self.send("GET", path)
            assert got.status_code == 200, (path, got.text)
            out[path] = got.json()["value"]
        return out


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    with ExitStack() as stack:
        a = App(tmp_path_factory.mktemp("fuzz"), stack)
        for pool in ("p0", "p-patch", "p-resize", "p-auto"):
            body = {**pool_body(0), "id": pool}
            assert a.send("POST", "/pools", body).status_code == 201
        assert a.send("POST", "/jobs", {**job_body(0), "id": "j0"}).status_code == 201
        base = {"id": "base", "commandLine": "/bin/true"}
        assert a.send("POST", "/jobs/j0/tasks", base).status_code == 201
        yield a


def check(app: App, name: str, body: Any) -> Any:
    method, path, _ = OPERATIONS[name]
    before = app.snapshot()
    got = app.send(method, path, body)
    assert got.status_code < 500, f"{name}: {got.status_code} {got.text[:500]} for {body!r:.500}"
    if got.status_code >= 400:
        error = got.json()
        assert isinstance(error.get("code"), str) and error["code"], got.text
        assert isinstance(error.get("message"), dict | str), got.text
        assert app.snapshot() == before, f"{name}: a rejected request changed state: {body!r:.500}"
    elif name == "add collection":
        results = got.json()["value"]
        assert all(v.get("status") in ("success", "clienterror", "servererror") for v in results)
        refused = [v["taskId"] for v in results if v["status"] != "success"]
        listed = {t["id"] for t in app.snapshot()["/jobs/j0/tasks"]}
        assert not set(refused) & listed, f"refused tasks exist: {set(refused) & listed}"
    return got


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_the_valid_template_is_accepted(app: App, name: str) -> None:
    """The bodies the fuzzing starts from are valid: the mutations start from accepted ground."""
    method, path, template = OPERATIONS[name]
    got = app.send(method, path, template(next(_ids) + 10_000))
    assert got.status_code in (200, 201, 202), (name, got.text)
    if name == "add collection":
        assert {v["status"] for v in got.json()["value"]} == {"success"}, got.text


@pytest.mark.parametrize("name", list(OPERATIONS))
@FUZZ
@given(data=st.data())
def test_no_body_crashes_the_service_or_leaves_anything_behind(
    app: App, name: str, data: st.DataObject
) -> None:
    template = OPERATIONS[name][2](next(_ids))
    body = data.draw(mutated(template), label="body")
    check(app, name, body)


@pytest.mark.parametrize("name", ["pool add", "task add", "pool patch"])
@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"null", b"[]", b'"x"', b"1e999999", b'{"id": NaN}', b"\xff\xfe", b"[" * 5000],
)
def test_bytes_that_are_not_a_valid_body_are_refused(app: App, name: str, raw: bytes) -> None:
    check(app, name, raw)
    got = app.send(*OPERATIONS[name][:2], raw)
    assert got.status_code == 400, got.text
    assert json.loads(got.text)["code"], got.text


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _leaves(item, (*path, i))
    else:
        yield path, value


def _with(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    body = json.loads(json.dumps(body))
    where = body
    for step in path[:-1]:
        where = where[step]
    where[path[-1]] = value
    return body


OUT_OF_RANGE = [2**63, -(2**63) - 1, 1e300]


def _wire_name(path: tuple[Any, ...]) -> str:
    """How the error names a property: ``value[0].constraints.maxTaskRetryCount``."""
    out = ""
    for step in path:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_numbers_past_64_bits_in_every_field_are_refused_naming_it(app: App, name: str) -> None:
    """Every field of the valid body, in turn, set to a number no 64-bit integer holds: a 400
    naming the field (before: SQLite's ``OverflowError``, a 500, or a dropped connection)."""
    method, path, template = OPERATIONS[name]
    for where, _ in _leaves(template(0)):
        for number in OUT_OF_RANGE:
            body = _with(template(next(_ids)), where, number)
            got = check(app, name, body)
            assert got.status_code == 400, (name, where, number, got.text)
            error = got.json()
            assert error["code"] == "InvalidPropertyValue", got.text
            named = {v["key"]: v["value"] for v in error["values"]}["PropertyName"]
            assert named == _wire_name(where), got.text


@pytest.mark.parametrize("raw", [b'{"id": NaN}', b'{"id": Infinity}', b'{"id": -Infinity}'])
def test_json_extensions_nan_and_infinity_are_not_json(app: App, raw: bytes) -> None:
    got = app.send("POST", "/pools", raw)
    assert got.status_code == 400
    assert got.json()["code"] == "InvalidRequestBody", got.text
