"""A node provider for tests that behaves the way a cloud does: the ``double`` kind.

Pools on it get real local node agents (as ``batch.node.local`` pools do), but everything
around them is a cloud's: each node gets a machine of its own (``<source>-m<n>``, a directory
under the source's ``root``) that takes ``bootSeconds`` to come up, the source has a
``capacity`` of machines (beyond it, ``AllocationFailed``) and an account quota in nodes
(``quotaNodes``; beyond it, ``AccountCoreQuotaReached``), node files are read through the
node's agent (its traits are those of a remote kind), and a test can make a machine vanish or
be preempted, which the provider reports to the engine as a cloud would.

Register the kind once per process with :func:`install`, then register a source through the
public client like any other kind::

    install()
    client.create_node_source({"kind": "double", "name": "cloud", "bootSeconds": 1.0})
    client.create_pool({..., "virtualMachineConfiguration": {
        "nodeAgentSKUId": "batch.node.double.cloud", ...}})
    cloud = cloud_of(client.account_name, "cloud")
    cloud.vanish(node_id)        # the machine is gone: its node is lost
    cloud.preempt(node_id)       # a spot reclaim
    cloud.fail(node_id)          # its launch was refused after all (capacity, quota)
    cloud.releases               # node id -> how many times it was released

Every built provider of one source (an engine's, a file operation's) shares its
:class:`DoubleCloud`, as they would share a cloud account. Nothing here imports pytest.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import threading
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_batch.core.ids import validate_id
from prefect_batch.exceptions import AgentError, BatchInvalidRequestError, invalid_property
from prefect_batch.providers.base import AgentConnection, EventCallback
from prefect_batch.providers.contract import (
    NodeProvider,
    NodeRef,
    NodeSlot,
    Placement,
    PoolRef,
    ProviderEvent,
    ProviderTraits,
    ReportCallback,
    ResizeError,
)
from prefect_batch.providers.kinds import BuildContext, ProviderKind, image_entry, register_kind
from prefect_batch.providers.local import LocalNodeSource

__all__ = [
    "KIND",
    "TRAITS",
    "DoubleCloud",
    "DoubleProvider",
    "build_provider",
    "cloud_of",
    "install",
    "supported_image",
    "validate_registration",
]

KIND = ProviderKind("double", __name__)
"""The kind; pools name a source of it ``batch.node.double.<name>``."""

TRAITS = ProviderTraits(unreachable_grace=True, wipe_fresh_nodes=True, low_priority=True)
"""Remote machines: files through the agent, a grace period when unreachable, fresh roots."""

_FIELDS = {"kind", "name", "bootSeconds", "capacity", "quotaNodes", "root"}


def install() -> None:
    """Register the ``double`` kind in this process (idempotent)."""
    register_kind(KIND)


@dataclass
class Machine:
    """One machine of the cloud: the node it runs and its agent once booted."""

    machine_id: str
    node_id: str
    root: Path
    booted: bool = False
    gone: bool = False
    agents: list[AgentConnection] = field(default_factory=list)


class DoubleCloud:
    """What a cloud account holds for one source: machines, calls made, releases done."""

    def __init__(self, account: str, name: str) -> None:
        self.account = account
        self.name = name
        self.lock = threading.Lock()
        self.machines: dict[str, Machine] = {}
        self.place_calls = 0
        self.releases: Counter[str] = Counter()
        """Node id -> releases carried out (a repeated request id is not counted again)."""
        self.release_requests: set[str] = set()
        self.report: ReportCallback | None = None
        self._seq = 0

    def new_machine_id(self) -> str:
        self._seq += 1
        return f"{self.name}-m{self._seq}"

    def machine_of(self, node_id: str) -> Machine:
        with self.lock:
            for machine in self.machines.values():
                if machine.node_id == node_id:
                    return machine
        raise KeyError(f"no machine runs node {node_id}")

    def vanish(self, node_id: str) -> None:
        """The node's machine goes away (as a terminated instance does)."""
        self._take_away(node_id, "lost", "NodeMachineLost", "the machine is gone")

    def preempt(self, node_id: str) -> None:
        """The node's machine is reclaimed (a spot interruption)."""
        self._take_away(node_id, "preempted", "NodePreempted", "the machine was preempted")

    def fail(self, node_id: str, code: str = "InsufficientInstanceCapacity") -> None:
        """The node's machine could not be had after all (a launch refused by the cloud)."""
        error = ResizeError(
            "AccountCoreQuotaReached" if "Limit" in code else "AllocationFailed",
            f"{self.name} could not launch a machine for {node_id}",
            {"code": code},
        )
        self._take_away(node_id, "failed", code, "the launch was refused", error)

    def _take_away(
        self,
        node_id: str,
        kind: str,
        code: str,
        message: str,
        error: ResizeError | None = None,
    ) -> None:
        machine = self.machine_of(node_id)
        machine.gone = True
        if self.report is not None:  # first the report, then the agent's own end
            text = f"{machine.machine_id}: {message}"
            self.report(ProviderEvent(node_id, kind, code, text, error))
        for agent in list(machine.agents):
            agent.kill(tasks=True, grace_seconds=2)


_CLOUDS: dict[tuple[str, str], DoubleCloud] = {}
_CLOUDS_LOCK = threading.Lock()


def cloud_of(account: str, name: str) -> DoubleCloud:
    """The cloud of the account's ``double`` source ``name`` (made on first use)."""
    with _CLOUDS_LOCK:
        found = _CLOUDS.get((account, name))
        if found is None:
            found = _CLOUDS[(account, name)] = DoubleCloud(account, name)
        return found


class DoubleProvider(NodeProvider):
    """The provider of one ``double`` source: places machines, boots them, gives them back."""

    kind = "double"
    traits = TRAITS

    def __init__(self, sku: str, spec: Mapping[str, Any], cloud: DoubleCloud) -> None:
        super().__init__(sku)
        self.cloud = cloud
        self.boot_seconds = float(spec.get("bootSeconds", 0.0))
        self.capacity: int | None = spec.get("capacity")
        self.quota_nodes: int | None = spec.get("quotaNodes")
        self.root = Path(spec.get("root") or Path(tempfile.gettempdir()) / "pb-double" / cloud.name)
        self._local = LocalNodeSource()
        self._closed = threading.Event()

    def place(
        self,
        pool: PoolRef,
        node_ids: Sequence[str],
        in_use: Collection[str],
        *,
        dedicated: bool = True,
    ) -> Placement:
        """A machine per node, within the capacity and the quota; the rest is a resize error."""
        cloud = self.cloud
        with cloud.lock:
            cloud.place_calls += 1
            held = len(cloud.machines)
            by_quota = math.inf if self.quota_nodes is None else self.quota_nodes - held
            by_capacity = math.inf if self.capacity is None else self.capacity - held
            count = int(max(0, min(len(node_ids), by_quota, by_capacity)))
            slots = []
            for node_id in node_ids[:count]:
                machine_id = cloud.new_machine_id()
                root = self.root / machine_id
                cloud.machines[machine_id] = Machine(machine_id, node_id, root)
                slots.append(
                    NodeSlot(
                        node_id,
                        machine_id=machine_id,
                        address="127.0.0.1",
                        root=str(root),
                        dedicated=dedicated,
                    )
                )
        if count == len(node_ids):
            return Placement(slots)
        if by_quota <= by_capacity:
            error = ResizeError(
                "AccountCoreQuotaReached",
                f"The node quota ({self.quota_nodes}) of {cloud.name} is reached",
                {"quotaNodes": str(self.quota_nodes)},
            )
        else:
            error = ResizeError(
                "AllocationFailed",
                f"{cloud.name} has no more machines (capacity {self.capacity})",
                {"capacity": str(self.capacity)},
            )
        return Placement(slots, error)

    def connect(self, node: NodeRef, on_event: EventCallback) -> AgentConnection:
        """Boot the node's machine (the first time) and start its agent there."""
        with self.cloud.lock:
            machine = self.cloud.machines.get(node.machine_id or "")
        if machine is None or machine.gone:
            raise AgentError(f"{node.machine_id}: no such machine")
        if not machine.booted:
            if self._closed.wait(self.boot_seconds):
                raise AgentError(f"{node.machine_id}: the service stopped while it booted")
            machine.booted = True
        agent = self._local.start_agent(node.node_id, Path(node.root), on_event)
        machine.agents = [a for a in machine.agents if not a.closed] + [agent]
        return agent

    def release(self, request_id: str, node: NodeRef, *, wipe_only: bool = False) -> None:
        """Give the machine back (or just empty its root); once per ``request_id``."""
        cloud = self.cloud
        with cloud.lock:
            if request_id in cloud.release_requests:
                return
            cloud.release_requests.add(request_id)
            cloud.releases[node.node_id] += 1
            machine = None if wipe_only else cloud.machines.pop(node.machine_id or "", None)
        if machine is not None:
            for agent in machine.agents:
                agent.kill(tasks=True, grace_seconds=2)
        shutil.rmtree(node.root, ignore_errors=True)

    def watch(self, report: ReportCallback) -> None:
        super().watch(report)
        self.cloud.report = report

    def close(self) -> None:
        self._closed.set()


# -- the kind ----------------------------------------------------------------------------------


def _count(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid_property(name, value, "must be a whole number of at least 0")
    return value


def validate_registration(body: Any) -> dict[str, Any]:
    """The stored spec of a ``double`` source (raises naming the offending field)."""
    if not isinstance(body, Mapping):
        raise BatchInvalidRequestError(
            "InvalidRequestBody", "A double node source is a JSON object."
        )
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise invalid_property(unknown[0], body[unknown[0]], "is not a field of this kind")
    name = body.get("name")
    if not isinstance(name, str):
        raise invalid_property("name", name, "is required")
    validate_id(name, "name")
    boot = body.get("bootSeconds", 0.0)
    if isinstance(boot, bool) or not isinstance(boot, int | float) or not 0 <= boot <= 600:
        raise invalid_property("bootSeconds", boot, "must be a number of seconds from 0 to 600")
    spec: dict[str, Any] = {"name": name, "bootSeconds": float(boot)}
    for count_field in ("capacity", "quotaNodes"):
        count = _count(body, count_field)
        if count is not None:
            spec[count_field] = count
    root = body.get("root")
    if root is not None:
        if not isinstance(root, str) or not Path(root).is_absolute():
            raise invalid_property("root", root, "must be an absolute path")
        spec["root"] = root
    return spec


def supported_image(name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return image_entry(KIND.sku(name), "double", name, "TestDouble")


def build_provider(sku: str, spec: Mapping[str, Any], context: BuildContext) -> DoubleProvider:
    return DoubleProvider(sku, spec, cloud_of(context.account, str(spec["name"])))
