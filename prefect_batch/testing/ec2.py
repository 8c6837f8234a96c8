"""EC2 on loopback for tests and benchmarks: moto's server, a connect guard, a template.

:func:`moto_ec2` runs moto's EC2 as a real HTTP endpoint on 127.0.0.1 (never every interface)
and resets it afterwards; :func:`loopback_only` refuses every IPv4/IPv6 connect that is not to
loopback (moto hands out 10.x and 54.x addresses: nothing may reach them); :func:`ec2_template`
is an ``ec2`` node-source registration whose instances are the given sshd servers, in launch
order. The agents on those "instances" run on this machine, outside any connect guard: the
template points their metadata service at loopback (:data:`NO_IMDS`, where nothing answers,
unless a test gives a fake's URL; never 169.254.169.254) and their orphan command at ``true``
(never a shutdown). AWS credentials are the caller's to set (any values do for moto). Nothing
here imports pytest.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect_batch.testing.sshd import SSHServers

__all__ = [
    "NO_IMDS",
    "REGION",
    "create_ec2_pool",
    "ec2_template",
    "lab_template",
    "loopback_only",
    "moto_ec2",
    "source_instances",
]

REGION = "us-east-1"
NO_IMDS = "http://127.0.0.1:9"
"""A metadata service URL on loopback that refuses connections (the discard port)."""


@contextmanager
def moto_ec2(region: str = REGION) -> Iterator[str]:
    """moto's server on 127.0.0.1 (a free port); yields its URL; its EC2 state reset after."""
    from moto.core.models import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        ec2_backends[DEFAULT_ACCOUNT_ID][region].reset()


@contextmanager
def loopback_only() -> Iterator[list[str]]:
    """Refuse (``OSError``) every connect that is not to loopback; yields the hosts refused."""
    refused: list[str] = []
    real = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            host = str(address[0])
            if not (host.startswith("127.") or host in ("::1", "localhost")):
                refused.append(host)
                raise OSError(f"test guard: no connection to {host} (loopback only)")
        return real(self, address)

    socket.socket.connect = connect  # type: ignore[method-assign,assignment]
    try:
        yield refused
    finally:
        socket.socket.connect = real  # type: ignore[method-assign]


def ec2_template(
    name: str,
    servers: SSHServers,
    endpoint_url: str,
    ami: str,
    known_hosts: Path,
    node_root: Path,
    **extra: Any,
) -> dict[str, Any]:
    """An ``ec2`` registration whose instances are ``servers`` (their host keys pinned in
    ``known_hosts``, which this writes)."""
    known_hosts.write_text(servers.known_hosts_text())
    return {
        "kind": "ec2",
        "name": name,
        "amiId": ami,
        "instanceType": "t3.micro",
        "regionName": REGION,
        "endpointUrl": endpoint_url,
        "sshEndpoints": [f"{s.address}:{s.port}" for s in servers],
        "sshUser": servers.user,
        "privateKeyPath": str(servers.client_key_path),
        "knownHosts": str(known_hosts),
        "nodeRoot": str(node_root),
        "imdsUrl": NO_IMDS,
        "orphanCommand": "true",
        **extra,
    }


def lab_template(
    prefix: str, servers: SSHServers, ec2: Any, endpoint_url: str, tmp_path: Path, **extra: Any
) -> dict[str, Any]:
    """:func:`ec2_template` named ``<prefix><6 hex>``, on moto's first Amazon image, polling
    every 0.5 s and ready within 30 s (``extra`` overrides)."""
    return ec2_template(
        f"{prefix}{uuid.uuid4().hex[:6]}",
        servers,
        endpoint_url,
        ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"],
        tmp_path / "known_hosts",
        tmp_path / "instances",
        **{"pollSeconds": 0.5, "readyTimeoutSeconds": 30, **extra},
    )


def create_ec2_pool(client: Any, pool_id: str, source: str, dedicated: int, low: int = 0) -> None:
    """A pool of ``dedicated`` on-demand and ``low`` spot nodes on the EC2 source ``source``."""
    client.create_pool(
        {
            "id": pool_id,
            "vmSize": "t3.micro",
            "targetDedicatedNodes": dedicated,
            "targetLowPriorityNodes": low,
            "virtualMachineConfiguration": {
                "imageReference": {"publisher": "prefect-batch", "offer": "ec2", "sku": source},
                "nodeAgentSKUId": f"batch.node.ec2.{source}",
            },
        }
    )


def source_instances(
    ec2: Any, source: str, states: tuple[str, ...] = ("pending", "running")
) -> list[dict[str, Any]]:
    """The instances tagged for the EC2 source ``source`` in one of ``states``."""
    pages = ec2.get_paginator("describe_instances").paginate(
        Filters=[
            {"Name": "tag:prefect-batch:source", "Values": [source]},
            {"Name": "instance-state-name", "Values": list(states)},
        ]
    )
    return [i for p in pages for r in p["Reservations"] for i in r["Instances"]]
