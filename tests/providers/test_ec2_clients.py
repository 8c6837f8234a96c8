"""The EC2 provider's two clients under throttling, without moto or sshd.

Every request the provider's boto3 clients make is answered at botocore's ``before-send`` hook,
so botocore's own retry logic runs on the answers (a ``Stubber`` answers before that logic and
would hide it). Nothing reaches the network: the endpoint is a loopback port that refuses, and
the connect guard is on.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from botocore.awsrequest import AWSResponse

from prefect_batch.exceptions import AgentError
from prefect_batch.providers.contract import MemoryRecords, NodeRef, ProviderEvent
from prefect_batch.providers.ec2 import EC2Provider, EC2Template
from prefect_batch.testing.ec2 import loopback_only

NS = 'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"'


def _error(code: str, status: int) -> tuple[int, str]:
    return status, (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Errors><Error>'
        f"<Code>{code}</Code><Message>{code} for this test</Message>"
        "</Error></Errors><RequestID>r-1</RequestID></Response>"
    )


THROTTLED = _error("RequestLimitExceeded", 503)
THROTTLING = _error("Throttling", 400)
NO_INSTANCES = (
    200,
    f"<DescribeInstancesResponse {NS}><requestId>r</requestId><reservationSet/>"
    "</DescribeInstancesResponse>",
)


def _one_instance(instance_id: str, tags: dict[str, str]) -> tuple[int, str]:
    tag_xml = "".join(f"<item><key>{k}</key><value>{v}</value></item>" for k, v in tags.items())
    return 200, (
        f"<DescribeInstancesResponse {NS}><requestId>r</requestId><reservationSet><item>"
        "<reservationId>r-1</reservationId><instancesSet><item>"
        f"<instanceId>{instance_id}</instanceId>"
        "<instanceState><code>16</code><name>running</name></instanceState>"
        f"<tagSet>{tag_xml}</tagSet></item></instancesSet></item></reservationSet>"
        "</DescribeInstancesResponse>"
    )


def _terminated(instance_id: str) -> tuple[int, str]:
    return 200, (
        f"<TerminateInstancesResponse {NS}><requestId>r</requestId><instancesSet><item>"
        f"<instanceId>{instance_id}</instanceId>"
        "<currentState><code>32</code><name>shutting-down</name></currentState>"
        "<previousState><code>16</code><name>running</name></previousState>"
        "</item></instancesSet></TerminateInstancesResponse>"
    )


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


class Wire:
    """Answers a client's requests in order, per action; records every request sent."""

    def __init__(self, client: Any) -> None:
        self.answers: dict[str, list[tuple[int, str]]] = {}
        self.sent: list[dict[str, str]] = []
        self.signed: list[str] = []  # each request's Authorization header
        client.meta.events.register("before-send.ec2", self._send)

    def answer(self, action: str, *answers: tuple[int, str]) -> None:
        self.answers.setdefault(action, []).extend(answers)

    def actions(self) -> list[str]:
        return [r["Action"] for r in self.sent]

    def _send(self, request: Any, **_: Any) -> AWSResponse:
        body = request.body.decode() if isinstance(request.body, bytes) else request.body
        params = {k: v[0] for k, v in parse_qs(body or "").items()}
        self.sent.append(params)
        auth = request.headers.get("Authorization") or b""
        self.signed.append(auth.decode() if isinstance(auth, bytes) else auth)
        queue = self.answers.get(params["Action"]) or []
        assert queue, f"no answer left for {params['Action']}"
        status, text = queue.pop(0)
        return AWSResponse(request.url, status, {}, _Raw(text.encode()))


def _template_with(endpoint: str, tmp_path: Path, **extra: Any) -> EC2Template:
    return EC2Template.model_validate(
        {
            "name": "unit",
            "amiId": "ami-12c6146b",
            "instanceType": "t3.micro",
            "endpointUrl": endpoint,
            "sshEndpoints": ["127.0.0.1:1"],
            "privateKeyPath": str(tmp_path / "key"),
            **extra,
        }
    )


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[EC2Provider]:
    for name, value in [
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_DEFAULT_REGION", "us-east-1"),
    ]:
        monkeypatch.setenv(name, value)
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))  # bound, never listening: a connect is refused
    template = _template_with(f"http://127.0.0.1:{refusing.getsockname()[1]}", tmp_path)
    with loopback_only() as refused:
        made = EC2Provider("batch.node.ec2.unit", template, "acct", MemoryRecords())
        try:
            yield made
        finally:
            made.close()
            refusing.close()
    assert refused == []


def _node(node_id: str = "n1") -> NodeRef:
    return NodeRef(account="acct", pool_id="p", node_id=node_id, root=f"/tmp/{node_id}")


def test_throttled_describe_and_terminate_are_retried_so_poll_and_release_succeed(
    provider: EC2Provider,
) -> None:
    wire = Wire(provider._ec2)
    stray = {"prefect-batch:account": "acct", "prefect-batch:source": "unit"}
    wire.answer("DescribeInstances", THROTTLED, _one_instance("i-stray", stray))
    wire.answer("TerminateInstances", THROTTLING, _terminated("i-stray"))
    provider.poll()  # finds a stray of its source after a throttle, terminates it after another
    assert wire.actions() == ["DescribeInstances"] * 2 + ["TerminateInstances"] * 2
    assert [r.get("InstanceId.1") for r in wire.sent[2:]] == ["i-stray", "i-stray"]
    wire.sent.clear()
    provider.records.put("node/n1", {"pool": "p", "instanceId": "i-n1", "launched": ["i-n1"]})
    wire.answer("TerminateInstances", THROTTLED, THROTTLING, _terminated("i-n1"))
    provider.release("r1", _node())
    assert wire.actions() == ["TerminateInstances"] * 3
    assert {r["InstanceId.1"] for r in wire.sent} == {"i-n1"}
    assert provider.records.get("node/n1") is None


def test_a_throttled_run_instances_is_sent_once_and_fails_the_start_retryably(
    provider: EC2Provider,
) -> None:
    events: list[ProviderEvent] = []
    provider.watch(events.append)
    launches = Wire(provider._launcher)
    looks = Wire(provider._ec2)
    looks.answer("DescribeInstances", NO_INSTANCES, NO_INSTANCES)  # nothing to adopt
    launches.answer("RunInstances", THROTTLED, THROTTLING)
    for _ in range(2):  # two starts, each refused once
        with pytest.raises(AgentError, match="throttled .*the next start launches again"):
            provider.connect(_node(), lambda msg: None)
    assert launches.actions() == ["RunInstances", "RunInstances"]  # the client did not retry
    # Nothing launched counts, and the retry keeps the client token: never two instances.
    first, second = (r["ClientToken"] for r in launches.sent)
    assert first == second and first.endswith("-1-0")
    assert provider.records.get("node/n1")["launched"] == []
    assert events == []  # no resize error: the pool keeps growing


def test_a_quota_error_is_a_resize_error_unlike_a_throttle(provider: EC2Provider) -> None:
    events: list[ProviderEvent] = []
    provider.watch(events.append)
    launches = Wire(provider._launcher)
    Wire(provider._ec2).answer("DescribeInstances", NO_INSTANCES)
    launches.answer("RunInstances", _error("InstanceLimitExceeded", 400))
    with pytest.raises(AgentError, match="InstanceLimitExceeded"):
        provider.connect(_node(), lambda msg: None)
    assert launches.actions() == ["RunInstances"]
    (event,) = events
    assert event.kind == "failed" and event.error is not None
    assert event.error.code == "AccountCoreQuotaReached"
    assert provider.records.get("node/n1") is None


def test_a_node_out_of_launches_is_refused_without_a_call_and_reported_once(
    provider: EC2Provider,
) -> None:
    # A service restarted after its last instance for n1 never answered (maxLaunchAttempts 3).
    events: list[ProviderEvent] = []
    provider.watch(events.append)
    launches, looks = Wire(provider._launcher), Wire(provider._ec2)  # no answers: no calls
    provider.records.put("node/n1", {"pool": "p", "launched": ["i-1", "i-2", "i-3"]})
    for _ in range(2):
        with pytest.raises(AgentError, match="AllocationTimedOut: node n1: gave up after 3"):
            provider.connect(_node(), lambda msg: None)
    assert launches.sent == [] and looks.sent == []
    (event,) = events  # told once, not on every later start
    assert (event.kind, event.code) == ("unusable", "AllocationTimedOut")
    assert event.error is not None and event.error.code == "AllocationTimedOut"
    assert dict(event.error.values)["instanceIds"] == "i-1,i-2,i-3"


def test_a_template_naming_an_aws_credentials_block_signs_with_its_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from prefect_aws import AwsCredentials

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAFROMTHEENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    loaded: list[str] = []

    def load(cls: Any, name: str, **_: Any) -> AwsCredentials:
        loaded.append(name)
        return AwsCredentials(aws_access_key_id="AKIAFROMTHEBLOCK", aws_secret_access_key="s3cr3t")

    monkeypatch.setattr(AwsCredentials, "load", classmethod(load))
    refusing = socket.socket()
    refusing.bind(("127.0.0.1", 0))
    endpoint = f"http://127.0.0.1:{refusing.getsockname()[1]}"
    with loopback_only() as refused:
        for extra, key in (
            ({"awsCredentialsBlockName": "lab-aws"}, "AKIAFROMTHEBLOCK"),
            ({}, "AKIAFROMTHEENV"),
        ):
            provider = EC2Provider(
                "batch.node.ec2.unit",
                _template_with(endpoint, tmp_path, **extra),
                "acct",
                MemoryRecords(),
            )
            try:
                wire = Wire(provider._ec2)
                wire.answer("DescribeInstances", NO_INSTANCES)
                provider.poll()
            finally:
                provider.close()
            assert wire.signed and f"Credential={key}/" in wire.signed[0]
    refusing.close()
    assert loaded == ["lab-aws"]
    assert refused == []


def test_an_aws_credentials_block_that_cannot_be_loaded_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from prefect_aws import AwsCredentials

    def load(cls: Any, name: str, **_: Any) -> AwsCredentials:
        raise ValueError(f"Unable to find block document named {name}")

    monkeypatch.setattr(AwsCredentials, "load", classmethod(load))
    template = _template_with("http://127.0.0.1:1", tmp_path, awsCredentialsBlockName="nope")
    with pytest.raises(AgentError, match="cannot load the AwsCredentials block 'nope'"):
        EC2Provider("batch.node.ec2.unit", template, "acct", MemoryRecords())


def test_registering_a_template_whose_credentials_block_cannot_load_names_the_field(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from prefect_aws import AwsCredentials

    from prefect_batch.exceptions import BatchServiceError
    from prefect_batch.providers.ec2 import validate_registration

    def load(cls: Any, name: str, **_: Any) -> AwsCredentials:
        raise ValueError(f"Unable to find block document named {name}")

    monkeypatch.setattr(AwsCredentials, "load", classmethod(load))
    body = _template_with("http://127.0.0.1:1", tmp_path, awsCredentialsBlockName="nope")
    with pytest.raises(BatchServiceError) as info:
        validate_registration({"kind": "ec2", **body.model_dump(mode="json", by_alias=True)})
    assert info.value.values.get("PropertyName") == "awsCredentialsBlockName"
