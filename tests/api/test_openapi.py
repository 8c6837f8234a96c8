"""The OpenAPI document the server publishes tells the truth.

* every operation says whether it is implemented (``x-prefect-batch-implemented``), and that
  matches the service — an operation marked unimplemented answers 501 ``NotImplemented``;
* every path the azure-batch SDK calls is either served or listed here as not served;
* no 422 answers (parameter errors are Azure's 400s), and every ``$ref`` resolves.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import azure.batch._operations._operations as sdk_operations
import httpx
import pytest

from prefect_batch.api.routes._spec import implemented
from tests.api.conftest import Server
from tests.api.test_auth import error, send

# Paths the SDK knows that this server does not route at all (they answer 404
# ResourceNotFound): Azure features with no counterpart on machines you own.
NOT_ROUTED = {
    ("GET", "/applications"),
    ("GET", "/applications/{applicationId}"),
    ("GET", "/poolusagemetrics"),
    ("POST", "/pools/{poolId}/nodes/{nodeId}/uploadbatchservicelogs"),
    ("GET", "/pools/{poolId}/nodes/{nodeId}/extensions"),
    ("GET", "/pools/{poolId}/nodes/{nodeId}/extensions/{extensionName}"),
    ("POST", "/pools/{poolId}/nodes/{nodeId}/start"),
    ("POST", "/pools/{poolId}/nodes/{nodeId}/deallocate"),
}


@pytest.fixture(scope="module")
def doc(server: Server) -> dict[str, Any]:
    """The document as the running server publishes it (no key needed)."""
    response = httpx.get(f"{server.url}/openapi.json", timeout=30)
    assert response.status_code == 200
    return response.json()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
    ]


def _sdk_paths() -> set[tuple[str, str]]:
    source = inspect.getsource(sdk_operations)
    found = set()
    for body, method in re.findall(
        r"def build_batch_\w+\((.*?)return HttpRequest\(method=\"(\w+)\"", source, re.S
    ):
        found.add((method, re.search(r'_url = "([^"]+)"', body).group(1)))
    return found


def test_every_sdk_path_is_served_or_listed(doc: dict[str, Any]) -> None:
    served = {(m, p) for m, p, _ in _operations(doc)}
    sdk = _sdk_paths()
    assert len(sdk) > 60
    assert sdk - served == NOT_ROUTED
    extensions = {(m, p) for m, p, op in _operations(doc) if op.get("x-prefect-batch-extension")}
    # Azure's certificates: gone from SDK 15.x, served for clients of api-version 2024-07-01.
    one = "/certificates(thumbprintAlgorithm={thumbprintAlgorithm},thumbprint={thumbprint})"
    legacy = {
        ("POST", "/certificates"),
        ("GET", "/certificates"),
        ("GET", one),
        ("DELETE", one),
        ("POST", one + "/canceldelete"),
    }
    assert served - sdk - legacy == extensions
    assert extensions == {
        ("GET", "/jobs/{jobId}/tasks/{taskId}/attempts"),
        ("GET", "/pools/{poolId}/nodes/{nodeId}/metrics"),
        ("POST", "/nodesources"),
        ("GET", "/nodesources"),
        ("GET", "/nodesources/{nodeSourceName}"),
        ("PUT", "/nodesources/{nodeSourceName}"),
        ("DELETE", "/nodesources/{nodeSourceName}"),
        ("GET", "/quotas"),
    }


def test_implemented_flags_match_the_service(doc: dict[str, Any]) -> None:
    for _, _, op in _operations(doc):
        flag = op["x-prefect-batch-implemented"]
        if not flag:
            assert "Not implemented in this version" in op["description"]
            assert "501" in op["responses"]
        else:
            assert "501" not in op["responses"]
    # Spot checks against the service itself.
    flags = {op["operationId"]: op["x-prefect-batch-implemented"] for _, _, op in _operations(doc)}
    assert flags["create_pool"] is implemented("create_pool") is True
    assert flags["get_job_schedule"] is implemented("get_job_schedule") is True
    assert flags["list_jobs_from_schedule"] is implemented("list_jobs_from_schedule") is True
    assert flags["replace_task"] is implemented("update_task") is True


def test_unimplemented_operations_answer_501(server: Server) -> None:
    checks = [("GET", "/jobschedules"), ("POST", "/pools/nope/evaluateautoscale")]
    for method, path in checks:
        op = path.split("/")[-1]
        expected = {
            "jobschedules": "list_job_schedules",
            "evaluateautoscale": "evaluate_pool_auto_scale",
        }[op]
        response = send(server, method, path, body={} if method == "POST" else None)
        if implemented(expected):
            assert response.status_code != 501
        else:
            assert response.status_code == 501
            assert error(response) == ("NotImplemented", {"Operation": expected})


def test_no_422_and_every_ref_resolves(doc: dict[str, Any]) -> None:
    text = str(doc)
    assert "'422'" not in text and "HTTPValidationError" not in text
    schemas = doc["components"]["schemas"]
    for ref in re.findall(r"#/components/schemas/([A-Za-z0-9_.-]+)", text):
        assert ref in schemas, ref


def test_bodies_and_security_are_documented(doc: dict[str, Any]) -> None:
    ops = {op["operationId"]: op for _, _, op in _operations(doc)}
    body = ops["create_task_collection"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/BatchTaskGroup"}
    assert "value" in doc["components"]["schemas"]["BatchTaskGroup"]["properties"]
    assert ops["list_tasks"]["security"] == [{"SharedKey": []}]
    params = {p["name"] for p in ops["list_tasks"]["parameters"]}
    assert {"jobId", "$filter", "$select", "maxresults", "$skiptoken", "api-version"} <= params
