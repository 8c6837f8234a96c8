"""Task confinement: which agent options confine tasks (local, SSH and EC2 nodes), and where.

A confined agent (``--confine``, see the agent's "confinement" section) starts every task under
Linux Landlock with no capabilities: a task reaches its own task directory, the node's shared
and startup directories and its job's preparation directory, reads the system's read-only trees
and the interpreter, and nothing of the service's home (the store and its keys, other nodes and
pools, agent state) nor any ``/proc`` entry. This module says which options the engine gives
its local agents (``confine_tasks``, ``task_paths``), whether this kernel can confine at all,
and which runs go unconfined: only an embedded job manager, which is handed the store itself
(there is no server to talk to). A task whose ``userIdentity`` asks for ``admin`` elevation is
confined like any other: a local node is a directory on the service's machine, and the root of
that machine (capabilities, no Landlock) would reach every account.

Agents on SSH hosts and EC2 instances (``confineTasks``, on by default) are confined with
:func:`prefect_batch.providers.ssh.remote_confinement_args`: the service knows no path on such
a host, so it names them as the agent will see them there (``~`` is the SSH user's home,
expanded by the agent) and the agent adds its own interpreter's trees and its ``PATH``'s
directories. Tasks there reach their task, shared, startup and job preparation directories,
the system's read-only trees, that interpreter and ``PATH``, and nothing else of the user's
home (``~/.ssh`` included) nor of the node root (the agent's state in ``<root>/.agent``, other
tasks). A host whose kernel has no Landlock still runs its agent (``--confine-optional``): the
agent's ``hello`` says ``"unconfined": <reason>``, the service logs a warning and the node
carries a ``TasksUnconfined`` error, "tasks unconfined: <reason>" (:func:`unconfined_errors`),
for as long as that agent runs.

Admin elevation needs a root agent: a run asking for it on a node whose agent's ``hello`` says
it is not root (``uid``) is ended at dispatch with ``ElevationNotAvailable`` (a ``usererror``
failureInfo, :func:`elevation_refusal`) instead of running as the agent's own user. Where the
agent is root, every run still runs as root (confined as above); ``nonadmin`` runs as an
unprivileged user are not built.

What it does not do: confine anything itself (the agent does, in the child, just before exec).
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path
from typing import Any

from prefect_batch.agent.agent import set_not_dumpable  # one copy: the agent is stdlib-only

__all__ = [
    "agent_confinement_args",
    "confinement_unavailable",
    "elevation_refusal",
    "is_admin",
    "landlock_abi",
    "run_confinement",
    "set_not_dumpable",
    "tasks_confined",
    "unconfined_errors",
]

UNCONFINED_CODE = "TasksUnconfined"

_LANDLOCK_CREATE_RULESET = 444  # the same number on every architecture


def confinement_unavailable() -> str | None:
    """Why tasks cannot be confined on this machine, or None when they can (Landlock)."""
    if not sys.platform.startswith("linux"):
        return f"task confinement needs Linux (Landlock); this is {sys.platform}"
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        abi = libc.syscall(_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except (OSError, AttributeError) as exc:
        return f"cannot call Landlock: {exc}"
    if abi < 1:
        return (
            "this kernel offers no Landlock (Linux 5.13 or later with lsm=landlock): "
            f"{os.strerror(ctypes.get_errno())}"
        )
    return None


def landlock_abi() -> int | None:
    """The Landlock ABI version this kernel offers (1, 2...), or None where it offers none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        abi = libc.syscall(_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except (OSError, AttributeError):
        return None
    return int(abi) if abi >= 1 else None


def tasks_confined(setting: bool | None, *, server: bool) -> bool:
    """Whether local nodes confine their tasks: ``confine_tasks`` when set, else on for a
    server wherever this kernel can confine, and off for an embedded client."""
    if setting is not None:
        return setting
    return server and confinement_unavailable() is None


def _python_trees() -> list[str]:
    """Where this service's Python code lives: tasks running Python need to read it too."""
    trees = {sys.prefix, sys.base_prefix, sys.exec_prefix}
    for entry in sys.path:
        if entry and os.path.isdir(entry):
            trees.add(os.path.realpath(entry))
    return sorted(trees)


def agent_confinement_args(
    *, confine: bool, protect: list[Path], task_paths: list[Path]
) -> list[str]:
    """The local agent's options: ``--confine`` with what tasks may read and write and which
    trees they must never reach (the home, the node root, the store's directory)."""
    if not confine:
        return []
    args = ["--confine"]
    for tree in _python_trees():
        args += ["--task-read", tree]
    for path in task_paths:
        args += ["--task-path", str(path)]
    for path in protect:
        args += ["--protect", str(path)]
    return args


def unconfined_errors(hello: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The node errors an agent's ``hello`` calls for: ``TasksUnconfined`` when it was asked
    to confine its tasks and cannot (``"unconfined"``), else None."""
    reason = hello.get("unconfined")
    if not reason:
        return None
    return [{"code": UNCONFINED_CODE, "message": f"tasks unconfined: {reason}"}]


def is_admin(spec: dict[str, Any] | None) -> bool:
    """Whether a task's ``userIdentity`` asks for admin elevation (on local nodes it confers
    nothing more: such a task is confined like any other)."""
    identity = (spec or {}).get("userIdentity") or {}
    auto = identity.get("autoUser") or {}
    return auto.get("elevationLevel") == "admin"


ELEVATION_CODE = "ElevationNotAvailable"


def elevation_refusal(spec: dict[str, Any] | None, agent_uid: int | None) -> dict[str, Any]:
    """The ``stage_error`` that ends a run asking for admin elevation on a node whose agent is
    not root (it could only run it as the agent's own user), else nothing. An agent that did
    not say its uid (``None``) is not refused."""
    if agent_uid is None or agent_uid == 0 or not is_admin(spec):
        return {}
    return {
        "stage_error": {
            "code": ELEVATION_CODE,
            "message": "The task asks for admin elevation (userIdentity.autoUser.elevationLevel "
            f"admin), but the node's agent runs as uid {agent_uid}, not root: it cannot run "
            "tasks as an administrator. Use nonadmin, or nodes whose agent runs as root",
            "category": "usererror",
            "phase": "start",
            "values": {"ElevationLevel": "admin", "AgentUid": str(agent_uid)},
        }
    }


def run_confinement(spec: dict[str, Any] | None, *, unconfined: bool = False) -> dict[str, Any]:
    """The ``confine`` field of a run request: ``{"confine": False}`` when ``unconfined`` (an
    embedded job manager), else nothing (a confined agent confines every run, admin ones
    too)."""
    return {"confine": False} if unconfined else {}
