"""The names a formula can use without defining them: service variables and constants.

Service variables come in five kinds (:class:`VariableKind`):

* **targets** -- ``$TargetDedicatedNodes`` (alias ``$TargetDedicated``) and
  ``$TargetLowPriorityNodes`` (alias ``$TargetLowPriority``): read as the pool's current target,
  set to the new one;
* **deallocation** -- ``$NodeDeallocationOption``: ``requeue`` (default), ``terminate``,
  ``taskcompletion`` or ``retaineddata``;
* **node counts** -- ``$CurrentDedicatedNodes`` (alias ``$CurrentDedicated``),
  ``$CurrentLowPriorityNodes`` (preempted nodes included), ``$PreemptedNodeCount``,
  ``$UsableNodeCount``: read bare as the current count (a double), or sampled through the sample
  methods (``$PreemptedNodeCount.GetSample(...)``);
* **pool properties** -- ``$TaskSlotsPerNode``: a double, not sampled;
* **metrics** -- sampled only (``$ActiveTasks.GetSample(...)``; a bare ``$ActiveTasks`` is an
  error that says so). Task metrics ``$ActiveTasks``, ``$RunningTasks``, ``$PendingTasks``
  (= active + running), ``$SucceededTasks``, ``$FailedTasks``, and our slot-aware extension
  ``$ActiveTaskSlots``, ``$RunningTaskSlots``, ``$PendingTaskSlots`` (the same tasks counted by
  ``requiredSlots``, which Azure cannot do: Azure/Batch#118). Resource metrics ``$CPUPercent``
  (0-100, mean over nodes), ``$MemoryBytes`` and ``$DiskBytes`` (bytes in use, mean over nodes),
  ``$DiskReadBytes``, ``$DiskWriteBytes``, ``$DiskReadOps``, ``$DiskWriteOps``,
  ``$NetworkInBytes``, ``$NetworkOutBytes``, ``$WallClockSeconds`` (summed over nodes), and
  ``$SampleNodeCount`` (nodes that reported).

Constants are bare names only: the ``TimeInterval_*`` intervals and the four deallocation
keywords (strings). ``$requeue`` is a variable, ``requeue`` the constant; neither may be
assigned.

All names are case-insensitive; :func:`service_variable` and :data:`CONSTANTS` take the
lower-cased name without ``$``. This module is a catalogue; it holds no values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from prefect_batch.core.autoscale.values import TIME_INTERVAL_CONSTANTS, Type, Value
from prefect_batch.core.states import NodeDeallocationOption

__all__ = [
    "CONSTANTS",
    "DEALLOCATION_OPTIONS",
    "METRIC_NAMES",
    "ServiceVariable",
    "VariableKind",
    "service_variable",
]


class VariableKind(enum.Enum):
    """How a service variable can be used."""

    TARGET = "target"
    """Readable and settable double: a node-count target."""
    DEALLOCATION = "deallocation"
    """Readable and settable string: ``$NodeDeallocationOption``."""
    NODE_COUNT = "node count"
    """Read-only double (the current value) that also has sample methods."""
    PROPERTY = "property"
    """Read-only double without samples."""
    METRIC = "metric"
    """Read-only sample series, usable only through sample methods."""


Aggregate = Literal["mean", "sum"]


@dataclass(frozen=True)
class ServiceVariable:
    """One service-defined variable.

    Attributes:
        name: The canonical spelling, with ``$`` (what results print).
        kind: How it can be used.
        description: What it measures.
        aggregate: For metrics read per node, how one sample's node readings combine
            (``mean`` or ``sum``); ``None`` for pool-level series.
    """

    name: str
    kind: VariableKind
    description: str
    aggregate: Aggregate | None = None

    @property
    def sampled(self) -> bool:
        """Whether it has sample methods."""
        return self.kind in (VariableKind.METRIC, VariableKind.NODE_COUNT)

    @property
    def settable(self) -> bool:
        """Whether a formula may assign it."""
        return self.kind in (VariableKind.TARGET, VariableKind.DEALLOCATION)


_K = VariableKind


def _v(
    name: str, kind: VariableKind, description: str, aggregate: Aggregate | None = None
) -> ServiceVariable:
    return ServiceVariable(name, kind, description, aggregate)


# (variable, aliases)
_CATALOGUE: tuple[tuple[ServiceVariable, tuple[str, ...]], ...] = (
    (_v("$TargetDedicatedNodes", _K.TARGET, "target dedicated nodes"), ("$TargetDedicated",)),
    (_v("$TargetLowPriorityNodes", _K.TARGET, "target Spot nodes"), ("$TargetLowPriority",)),
    (_v("$NodeDeallocationOption", _K.DEALLOCATION, "what happens to tasks of removed nodes"), ()),
    (_v("$CurrentDedicatedNodes", _K.NODE_COUNT, "dedicated nodes now"), ("$CurrentDedicated",)),
    (_v("$CurrentLowPriorityNodes", _K.NODE_COUNT, "Spot nodes now, preempted included"), ()),
    (_v("$PreemptedNodeCount", _K.NODE_COUNT, "nodes in the preempted state"), ()),
    (_v("$UsableNodeCount", _K.NODE_COUNT, "nodes that can run tasks"), ()),
    (_v("$TaskSlotsPerNode", _K.PROPERTY, "the pool's task slots per node"), ()),
    (_v("$ActiveTasks", _K.METRIC, "tasks ready to run, dependencies met"), ()),
    (_v("$RunningTasks", _K.METRIC, "tasks running"), ()),
    (_v("$PendingTasks", _K.METRIC, "active plus running tasks"), ()),
    (_v("$SucceededTasks", _K.METRIC, "tasks that finished successfully"), ()),
    (_v("$FailedTasks", _K.METRIC, "tasks that failed"), ()),
    (_v("$ActiveTaskSlots", _K.METRIC, "slots the active tasks need (extension)"), ()),
    (_v("$RunningTaskSlots", _K.METRIC, "slots the running tasks hold (extension)"), ()),
    (_v("$PendingTaskSlots", _K.METRIC, "active plus running slots (extension)"), ()),
    (_v("$CPUPercent", _K.METRIC, "CPU use, 0-100", "mean"), ()),
    (_v("$MemoryBytes", _K.METRIC, "memory in use, bytes", "mean"), ()),
    (_v("$DiskBytes", _K.METRIC, "local disk in use, bytes", "mean"), ()),
    (_v("$DiskReadBytes", _K.METRIC, "bytes read from disk", "sum"), ()),
    (_v("$DiskWriteBytes", _K.METRIC, "bytes written to disk", "sum"), ()),
    (_v("$DiskReadOps", _K.METRIC, "disk read operations", "sum"), ()),
    (_v("$DiskWriteOps", _K.METRIC, "disk write operations", "sum"), ()),
    (_v("$NetworkInBytes", _K.METRIC, "bytes received", "sum"), ()),
    (_v("$NetworkOutBytes", _K.METRIC, "bytes sent", "sum"), ()),
    (_v("$WallClockSeconds", _K.METRIC, "seconds of node time used", "sum"), ()),
    (_v("$SampleNodeCount", _K.METRIC, "nodes that reported metrics"), ()),
)

_BY_KEY: dict[str, ServiceVariable] = {
    name[1:].lower(): variable
    for variable, aliases in _CATALOGUE
    for name in (variable.name, *aliases)
}

METRIC_NAMES: frozenset[str] = frozenset(v.name for v, _ in _CATALOGUE if v.sampled)
"""Canonical names of every variable with samples (the keys an environment's series use)."""


def service_variable(key: str) -> ServiceVariable | None:
    """The service variable named ``key`` (lower case, no ``$``; aliases too), if any."""
    return _BY_KEY.get(key)


DEALLOCATION_OPTIONS: frozenset[str] = frozenset(o.value for o in NodeDeallocationOption)
"""The values ``$NodeDeallocationOption`` accepts."""

CONSTANTS: dict[str, tuple[Type, Value]] = {
    **{name.lower(): (Type.INTERVAL, value) for name, value in TIME_INTERVAL_CONSTANTS.items()},
    **{option: (Type.STRING, option) for option in DEALLOCATION_OPTIONS},
}
"""Bare-name constants by lower-cased name: their type and value."""
