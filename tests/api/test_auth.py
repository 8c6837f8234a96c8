"""SharedKey at the HTTP level (plain httpx, like curl): what is accepted, what is refused and
with which Azure body; accounts kept apart; and the signature identical to the SDK's.
"""

from __future__ import annotations

import base64
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from azure.batch._patch import BatchSharedKeyAuthPolicy
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.pipeline import PipelineContext, PipelineRequest
from azure.core.rest import HttpRequest

from prefect_batch.api.auth import KeyRing
from prefect_batch.core.sharedkey import authorization_header, http_date, new_key
from prefect_batch.service.ops.accounts import AccountOperations
from tests.api.conftest import API, Server, signed_send


def now_date() -> str:
    """The ``ocp-date`` of a request sent now."""
    return http_date(datetime.now(timezone.utc))


def send(
    server: Server,
    method: str,
    path: str,
    *,
    account: str | None = None,
    key: str | None = None,
    timeout: float | httpx.Timeout = 30,
    **options: Any,
) -> httpx.Response:
    """One request to the server signed like the SDK does (or not at all, with ``sign=False``)."""
    with httpx.Client(base_url=server.url, timeout=timeout) as http:
        return signed_send(
            http,
            method,
            path,
            account=account or server.account.name,
            key=key or server.account.primary,
            **options,
        )


def error(response: httpx.Response) -> tuple[str, dict[str, str]]:
    body = response.json()
    return body["code"], {v["key"]: v["value"] for v in body.get("values", [])}


# -- the signature ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "url", "headers", "body"),
    [
        ("GET", "http://h/pools?api-version=2025-06-01", {}, None),
        (
            "GET",
            "http://h/jobs/j/tasks?api-version=2025-06-01&maxresults=5"
            "&$filter=state%20eq%20%27active%27&$select=id,state",
            {},
            None,
        ),
        ("POST", "http://h/pools?api-version=2025-06-01", {}, {"id": "p", "vmSize": "local"}),
        ("POST", "http://h/jobs/j/enable?api-version=2025-06-01", {}, None),
        (
            "GET",
            "http://h/jobs/j/tasks/t/files/wd/a%20b.txt?api-version=2025-06-01",
            {"ocp-range": "bytes=0-9", "If-Modified-Since": "Tue, 01 Jan 2030 00:00:00 GMT"},
            None,
        ),
        ("DELETE", "http://h/pools/p?api-version=2025-06-01", {"If-Match": '"0x8"'}, None),
    ],
)
def test_signature_is_the_sdks(method: str, url: str, headers: dict[str, str], body: Any) -> None:
    key = new_key()
    request = HttpRequest(method, url, headers={"ocp-date": now_date(), **headers}, json=body)
    BatchSharedKeyAuthPolicy(AzureNamedKeyCredential("acct", key)).on_request(
        PipelineRequest(request, PipelineContext(None))
    )
    raw_path, _, query = url.partition("//h")[2].partition("?")
    ours = authorization_header(
        method,
        raw_path,
        query,
        [(k, v) for k, v in request.headers.items() if k.lower() != "authorization"],
        "acct",
        key,
    )
    assert ours == request.headers["Authorization"]


# -- refusals -----------------------------------------------------------------------------------


def test_a_signed_request_is_accepted(server: Server) -> None:
    response = send(server, "GET", "/pools")
    assert response.status_code == 200
    assert response.json()["value"] == [] or isinstance(response.json()["value"], list)
    assert response.headers["request-id"]


def test_the_secondary_key_works_too(server: Server) -> None:
    assert send(server, "GET", "/pools", key=server.account.secondary).status_code == 200


def test_wrong_key(server: Server) -> None:
    response = send(server, "GET", "/pools", key=new_key())
    assert response.status_code == 403
    code, values = error(response)
    assert code == "AuthenticationFailed"
    assert "signature" in values["AuthenticationErrorDetail"]


def test_unknown_account_gets_the_same_answer_as_a_wrong_key(server: Server) -> None:
    response = send(server, "GET", "/pools", account="nosuchacct", key=new_key())
    assert response.status_code == 403
    assert error(response) == error(send(server, "GET", "/pools", key=new_key()))


def test_missing_authorization_header(server: Server) -> None:
    response = send(server, "GET", "/pools", sign=False)
    assert response.status_code == 400
    assert error(response) == ("MissingRequiredHeader", {"HeaderName": "Authorization"})


@pytest.mark.parametrize(
    "value",
    ["Bearer abc", "SharedKey", "SharedKey acct", "SharedKey :sig", "SharedKey acct:"],
)
def test_malformed_authorization_header(server: Server, value: str) -> None:
    response = send(server, "GET", "/pools", sign=False, headers={"Authorization": value})
    assert response.status_code == 403
    assert error(response)[0] == "AuthenticationFailed"


def test_missing_date(server: Server) -> None:
    with httpx.Client(base_url=server.url) as http:
        request = http.build_request("GET", "/pools", params=API)
        raw_path, _, query = request.url.raw_path.decode().partition("?")
        request.headers["Authorization"] = authorization_header(
            "GET", raw_path, query, list(request.headers.items()), "acct", server.account.primary
        )
        response = http.send(request)
    assert response.status_code == 400
    assert error(response) == ("MissingRequiredHeader", {"HeaderName": "ocp-date"})


def test_bad_date(server: Server) -> None:
    response = send(server, "GET", "/pools", headers={"ocp-date": "yesterday"})
    assert response.status_code == 400
    assert error(response)[0] == "InvalidHeaderValue"


@pytest.mark.parametrize("minutes", [-16, 16])
def test_date_outside_15_minutes(server: Server, minutes: int) -> None:
    when = datetime.now(timezone.utc) + timedelta(minutes=minutes)
    response = send(server, "GET", "/pools", date=when)
    assert response.status_code == 403
    code, values = error(response)
    assert code == "AuthenticationFailed"
    assert "15 minutes" in values["AuthenticationErrorDetail"]


@pytest.mark.parametrize("minutes", [-14, 14])
def test_date_inside_15_minutes(server: Server, minutes: int) -> None:
    when = datetime.now(timezone.utc) + timedelta(minutes=minutes)
    assert send(server, "GET", "/pools", date=when).status_code == 200


def test_a_changed_query_breaks_the_signature(server: Server) -> None:
    with httpx.Client(base_url=server.url) as http:
        request = http.build_request(
            "GET", "/pools", params={**API, "maxresults": "5"}, headers={"ocp-date": now_date()}
        )
        raw_path, _, query = request.url.raw_path.decode().partition("?")
        auth = authorization_header(
            "GET", raw_path, query, list(request.headers.items()), "acct", server.account.primary
        )
        tampered = http.build_request(
            "GET",
            "/pools",
            params={**API, "maxresults": "6"},
            headers={"ocp-date": request.headers["ocp-date"], "Authorization": auth},
        )
        response = http.send(tampered)
    assert response.status_code == 403


def test_api_version_is_required_and_checked(server: Server) -> None:
    with httpx.Client(base_url=server.url) as http:
        request = http.build_request("GET", "/pools", headers={"ocp-date": now_date()})
        raw_path, _, query = request.url.raw_path.decode().partition("?")
        request.headers["Authorization"] = authorization_header(
            "GET", raw_path, query, list(request.headers.items()), "acct", server.account.primary
        )
        response = http.send(request)
    assert response.status_code == 400
    assert error(response)[0] == "MissingRequiredQueryParameter"
    response = send(server, "GET", "/pools", params={"api-version": "2019-08-01.10.0"})
    assert response.status_code == 400
    assert error(response)[0] == "InvalidQueryParameterValue"


# -- accounts apart -----------------------------------------------------------------------------


def test_accounts_see_only_their_own(server: Server) -> None:
    other = server.add_account("other")
    assert (
        send(server, "POST", "/pools", body={"id": "secret", "vmSize": "local"}).status_code == 201
    )
    assert (
        send(
            server, "POST", "/jobs", body={"id": "job-a", "poolInfo": {"poolId": "secret"}}
        ).status_code
        == 201
    )

    as_b: dict[str, Any] = {"account": other.name, "key": other.primary}
    response = send(server, "GET", "/pools/secret", **as_b)
    assert response.status_code == 404
    assert error(response)[0] == "PoolNotFound"
    assert send(server, "GET", "/pools", **as_b).json()["value"] == []
    assert send(server, "GET", "/jobs/job-a", **as_b).status_code == 404
    assert send(server, "GET", "/jobs/job-a/tasks", **as_b).status_code == 404
    assert send(server, "DELETE", "/pools/secret", **as_b).status_code == 404
    # B's key does not open A's account, and ids are per account.
    assert (
        send(server, "GET", "/pools", account=server.account.name, key=other.primary).status_code
        == 403
    )
    assert (
        send(server, "POST", "/pools", body={"id": "secret", "vmSize": "local"}, **as_b).status_code
        == 201
    )
    assert send(server, "GET", "/pools/secret").json()["url"].endswith("/pools/secret")
    assert send(server, "DELETE", "/pools/secret", **as_b).status_code == 202
    assert send(server, "GET", "/pools/secret").status_code == 200


def test_a_new_or_rotated_key_works_at_once(server: Server) -> None:
    ops = AccountOperations(server.store)
    acct = ops.create("fresh")
    assert send(server, "GET", "/pools", account="fresh", key=acct.primary).status_code == 200
    rotated = ops.rotate("fresh", "primary")
    assert send(server, "GET", "/pools", account="fresh", key=rotated.primary).status_code == 200
    assert send(server, "GET", "/pools", account="fresh", key=rotated.secondary).status_code == 200


def test_keyring_forgets_a_replaced_key_after_its_cache_time(server: Server) -> None:
    now = [1000.0]
    ring = KeyRing(server.store, ttl_seconds=5.0, monotonic=lambda: now[0])
    ops = AccountOperations(server.store)
    acct = ops.create("cached")
    old = base64.b64decode(acct.primary)
    assert old in ring.keys("cached")
    ops.rotate("cached", "primary")
    assert old in ring.keys("cached")  # cached
    now[0] += 5.1
    assert old not in ring.keys("cached")
    assert ring.keys("nobody") == ()


# -- the rest of the HTTP surface -----------------------------------------------------------------


def test_bad_bodies_and_queries_get_azure_errors(server: Server) -> None:
    response = send(server, "POST", "/pools", body=b"{not json")
    assert response.status_code == 400 and error(response)[0] == "InvalidRequestBody"
    response = send(server, "POST", "/pools", body=[1, 2])
    assert response.status_code == 400 and error(response)[0] == "InvalidRequestBody"
    response = send(server, "POST", "/pools", body={"id": "p", "vmSize": "local", "colour": 1})
    assert response.status_code == 400
    assert error(response)[0] == "UnsupportedProperty"
    response = send(server, "GET", "/pools", params={"$filter": "state eq"})
    assert response.status_code == 400
    code, values = error(response)
    assert code == "InvalidQueryParameterValue" and values["QueryParameterName"] == "$filter"
    response = send(server, "GET", "/pools", params={"maxresults": "0"})
    assert error(response)[1]["QueryParameterName"] == "maxresults"
    response = send(server, "GET", "/pools", params={"maxresults": "many"})
    assert response.status_code == 400 and error(response)[0] == "InvalidQueryParameterValue"
    response = send(server, "GET", "/pools", params={"$skiptoken": "!!"})
    assert response.status_code == 400 and error(response)[0] == "InvalidQueryParameterValue"
    big = {"id": "p", "vmSize": "local", "displayName": "x" * (5 * 1024 * 1024)}
    response = send(server, "POST", "/pools", body=big)
    assert response.status_code == 413 and error(response)[0] == "RequestBodyTooLarge"


def test_unknown_paths_and_verbs(server: Server) -> None:
    response = send(server, "GET", "/nosuchresources")
    assert response.status_code == 404 and error(response)[0] == "ResourceNotFound"
    response = send(server, "PUT", "/pools")
    assert response.status_code == 405 and error(response)[0] == "UnsupportedHttpVerb"


def test_client_request_id_is_echoed_on_request(server: Server) -> None:
    rid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    echoed = send(
        server,
        "GET",
        "/pools",
        headers={"client-request-id": rid, "return-client-request-id": "true"},
    )
    assert echoed.headers["client-request-id"] == rid
    assert (
        "client-request-id"
        not in send(server, "GET", "/pools", headers={"client-request-id": rid}).headers
    )


def test_the_openapi_document_needs_no_key(server: Server) -> None:
    response = httpx.get(f"{server.url}/openapi.json")
    assert response.status_code == 200
    assert "SharedKey" in response.json()["components"]["securitySchemes"]


def test_keys_are_base64_of_64_bytes() -> None:
    key = new_key()
    assert len(base64.b64decode(key, validate=True)) == 64
    assert new_key() != key
