#!/usr/bin/env python3
"""prefect-batch node agent: the only code that runs on a compute node.

The agent is one self-contained file that uses the Python standard library only (Python 3.8+),
because the service ships it to remote hosts as text over SSH and runs it as
``python3 agent.py --root DIR``. It owns the node's directory layout, starts task processes
without a shell, enforces wall-clock limits, writes every task's result to disk, and reports
over its stdin/stdout. It does not schedule, retry, download resource files or upload output
files: the service decides all of that and tells the agent exactly what to run.

Protocol (version 1)
====================

Versioned JSON lines: one JSON object per line. Requests arrive on stdin, each with an ``"op"``;
events leave on stdout, each with an ``"ev"``. Stderr carries the agent's own diagnostics only.
All times are float UNIX seconds. A request the agent does not understand is answered with
``{"ev": "error", "op": ..., "code": "OperationInvalid", "message": ...}``; it never crashes the
agent. Events of one loop iteration are written together.

Layout under ``--root`` (the ``AZ_BATCH_NODE_ROOT_DIR``)::

    shared/  startup/  fsmounts/           node directories (created at start and on hello)
    <dir>/stdout.txt  <dir>/stderr.txt     a task's output, truncated when it starts
    <dir>/wd/                              the task's working directory
    .agent/runs/<key>.json                 run records: what was started, and its result
    .agent/trash/                          trees being deleted (``delete``)

``hello`` ``{"op":"hello","v":1,"node_id":..,"pool_id":..}`` ->
    ``{"ev":"hello","v":1,"agent_version":"0.1.0","pid":..,"uid":..,"hostname":..,"cpu_count":..,
    "memory_bytes":..,"root":..,"time":..,"reaper":"pidfd"|"sigchld",
    "spawn":"posix_spawn"|"popen","confined":bool}``, plus ``"unconfined":"<reason>"`` when
    the agent was asked to confine (``--confine --confine-optional``) and this kernel cannot.

``run`` ``{"op":"run","key":K,"argv":[..],"dir":"jobA/task1","env":{..},
    "wall_clock_seconds":float|null,"job_prep_dir":"jobA/jobpreparation"|null}``
    ``key`` matches ``^[A-Za-z0-9_.-]{1,128}$``; ``dir`` (and ``job_prep_dir``) are relative to
    the root, without empty, ``.`` or ``..`` components, and must stay inside the root after
    symlinks are resolved. The agent creates ``<dir>/wd``, truncates ``<dir>/stdout.txt`` and
    ``<dir>/stderr.txt`` and points the process's stdout/stderr at them; stdin is /dev/null and
    the working directory is ``<dir>/wd``. There is no shell: ``argv`` is executed directly.
    ``argv[0]`` without ``/`` is looked up in the PATH of the task's environment; a relative
    path with ``/`` is relative to the working directory. The process starts in a new session
    (its own process group), so killing the group kills its children too and the task survives
    the agent's session. Environment = the agent's environment + ``env`` + the ``AZ_BATCH_*``
    directory variables, which always win: ``AZ_BATCH_NODE_ROOT_DIR``,
    ``AZ_BATCH_NODE_SHARED_DIR``, ``AZ_BATCH_NODE_STARTUP_DIR``, ``AZ_BATCH_NODE_MOUNTS_DIR``,
    ``AZ_BATCH_TASK_DIR``, ``AZ_BATCH_TASK_WORKING_DIR``, ``AZ_BATCH_NODE_TASK_DIR``,
    ``AZ_BATCH_NODE_TASK_WORKING_DIR`` and, with ``job_prep_dir``, ``AZ_BATCH_JOB_PREP_DIR``,
    ``AZ_BATCH_JOB_PREP_WORKING_DIR``, ``AZ_BATCH_NODE_JOB_PREP_DIR``,
    ``AZ_BATCH_NODE_JOB_PREP_WORKING_DIR``. Signals that the agent ignores or handles are reset
    to their defaults in the task.

    -> ``{"ev":"started","key":K,"pid":..,"time":..}`` and a run record
    ``{"key","pid","dir","start_time","deadline","agent_pid","agent_start"}``. A record is a
    JSON-lines file whose lines are merged in order, each line written with one ``write`` (a
    reader never sees half a line; a torn line is skipped): the start line, after one second
    ``{"proc_start"}`` (the /proc start time that tells a reused pid apart), and, when the
    process ends, the result line ``{"end_time","exit_code","timed_out","killed","error"}``,
    written before ``{"ev":"exited","key":K,"exit_code":int|null,"start_time":..,
    "end_time":..,"timed_out":bool,"killed":bool,"error":null|{"code":..,"message":..}}`` is
    emitted. ``exit_code`` is the exit status, or 128+N if signal N ended it (the agent's own
    SIGKILL gives 137; the service sets its own code for timed-out and killed tasks). If the
    program cannot be started there is no process: ``exit_code`` is null and ``error.code`` is
    ``CommandProgramNotFound`` or ``CommandProgramNotExecutable`` (``TaskStartFailed`` for other
    OS errors) with the OS message. A request that is invalid (key, argv, dir, env) gets an
    ``exited`` event with ``error.code`` ``OperationInvalid``; a run while draining gets
    ``AgentDraining``. Every ``exited`` event for a valid key is recorded first. A run whose key
    is still running gets ``{"ev":"error","op":"run","key":K,"code":"TaskKeyInUse"}`` instead.
    ``wall_clock_seconds`` (> 0): when it passes, the agent SIGKILLs the process group and the
    ``exited`` event says ``"timed_out": true``.

    File transfers (optional fields of ``run``): ``downloads`` ``[{"url","path","mode"}]`` are
    fetched before the command runs, up to 8 at once on worker threads, with 3 attempts for
    transient errors, each written to a temporary file and renamed into place (``path`` is
    relative to the working directory and must stay inside it after symlinks are resolved;
    ``mode`` defaults to 0o770). A failed download ends the run without starting it: ``error``
    is ``{"code": "BlobNotFound"|"BlobAccessDenied"|"BlobDownloadTimedOut"|
    "BlobDownloadMiscError"|"ResourceFileCreateFailed"|..., "message", "category":
    "usererror"|"servererror", "values": {"FilePath": ..}, "phase": "download"}``. A download
    that would leave less than 64 MiB free on the disk fails the same way. ``stage_error`` (an
    error the service met resolving the files) ends the run like that at once. ``uploads``
    ``[{"pattern","condition","single","base","name","target"}]`` are uploaded after the process
    exits (not after a kill), when ``condition`` (tasksuccess, taskfailure, taskcompletion)
    holds, by presigned POST or by PUT, with a log in ``<dir>/fileuploadout.txt`` and
    ``<dir>/fileuploaderr.txt``; the ``exited`` event then carries ``upload_error`` (``null`` or
    an error with ``"phase": "upload"``). ``transfer_timeout_seconds`` bounds each request.

    Disk full: when a process ends, the node root's free space is below
    ``--disk-reserve-bytes`` (64 MiB by default) and the run's own directory holds what is
    missing (its size plus the free space reaches the reserve), its output is taken to have
    filled the disk: its working directory is emptied, its stdout.txt and stderr.txt are cut
    to their first MiB, no file is uploaded, and ``error`` is ``{"code": "DiskFull",
    "category": "usererror", "phase": "run", "message", "values": {"FreeBytes",
    "FreeBytesAfterCleanup"}}`` (the exit code is kept). The node keeps running tasks.

    Multi-instance tasks (optional ``instance``): ``"coordination"`` runs a coordination
    command: its output goes to ``<dir>/coordination-stdout.txt`` and
    ``<dir>/coordination-stderr.txt``, its ``downloads`` (the common resource files) land in
    ``<dir>`` rather than ``<dir>/wd``, and what it leaves running in its process group (the
    background services it starts) stays alive after it exits, until a ``kill`` of the same key
    ends that group. ``"primary"`` is the application command on the primary node. Both get
    ``AZ_BATCH_TASK_SHARED_DIR`` = ``<dir>``.

``certs`` ``{"op":"certs","certificates":[{"thumbprint":..,"visibility":[..],"files":{name:
    base64}}]}`` -> replaces the node's certificates (no event): each file (``<thumbprint>.pfx``,
    ``.cer`` or ``.pem``) is kept in ``.agent/certs/<role>/`` for each role of its
    ``visibility`` (``starttask``, ``task``), directories 0700 and files 0600. A ``run`` with
    ``"certs": "starttask"|"task"`` gets a copy of that role's files in ``<dir>/certs`` before
    it starts, and ``AZ_BATCH_CERTIFICATES_DIR`` names that directory (Azure's Linux layout).
    A confined task reads its copy; the node's own set, under ``.agent``, is out of its reach.

``kill`` ``{"op":"kill","key":K,"grace_seconds":float|null}`` -> SIGKILL the task's process
    group; with ``grace_seconds`` > 0, SIGTERM first and SIGKILL only if the group is still
    there when the grace period ends (so a supervisor such as ``prefect flow-run execute`` can
    record what it was doing). Its ``exited`` event says ``"killed": true`` (a run killed before
    its process started: ``exit_code`` null, no error). Unknown or finished keys: nothing
    happens, nothing is emitted — except a finished coordination command, whose left-over
    process group is SIGKILLed; a second kill during the grace period SIGKILLs at once.

``recover`` ``{"op":"recover","keys":[..]}`` -> per key, one of:
    * the record has a result: the ``exited`` event again, with ``"recovered": true``;
    * the process is alive (same pid and same /proc start time, or a wall-clock start within 2 s
      of the record's for a task younger than a second) or the agent that started it is
      still alive: ``{"ev":"adopted","key":K}`` now, and later either the ``exited`` event with
      ``"recovered": true`` (when the record gets a result: the old agent is still supervising,
      e.g. it is draining after its session dropped) or ``{"ev":"lost","key":K,"reason":..}``
      when the process is gone and nobody recorded a result. A task whose agent died (SIGKILL,
      crash) is no longer anybody's child: its exit status cannot be known, so it ends as
      ``lost``. If this agent killed it (kill op, or the recorded deadline passed) it ends as
      ``exited`` with ``exit_code`` null and ``killed``/``timed_out`` set;
    * no record, or a record without result whose process and agent are gone:
      ``{"ev":"lost","key":K,"reason":..}``.
    A key this agent is running itself answers ``adopted`` (its ``exited`` follows as usual).

``forget`` ``{"op":"forget","keys":[..]}`` -> deletes those run records. No event.

``delete`` ``{"op":"delete","dir":D[,"ev_id":X]}`` -> removes the directory tree ``D`` (validated
    like ``run``'s dir); with ``ev_id`` it answers ``{"ev":"deleted","dir":D,"ev_id":X}``. A
    failure answers ``{"ev":"error","op":"delete","dir":D,"ev_id":X,"code":..,"message":..}``.
    The tree is first renamed into ``.agent/trash/`` (one atomic step, to a name no file
    request can reach), then removed there: a concurrent list or read sees the whole tree or
    none of it, never a half-removed one. What a stopped agent left in the trash is removed
    when the next one starts.

File access (paths relative to the root; ``""`` is the root itself). No symlink below the root is
ever followed: every component is opened relative to its parent with ``O_NOFOLLOW`` (a link on
the way is ``OperationInvalid``), and checks run on the opened descriptor (``fstat``):
    ``{"op":"list_files","req":R,"path":P,"recursive":bool}`` -> ``{"ev":"files","req":R,
    "path":P,"files":[{"name","is_directory","kind","content_length","creation_time",
    "last_modified","file_mode"}]}`` with names relative to ``P`` (``/``-separated),
    ``file_mode`` like ``"0o644"`` and ``kind`` one of ``dir``, ``file``, ``link`` (any
    symlink, listed from ``lstat``, never followed nor descended into) and ``other`` (FIFO,
    socket, device); names that are not UTF-8 are left out; the root's ``.agent`` is not listed.
    ``{"op":"read_file","req":R,"path":P,"offset":int,"length":int|null}`` ->
    ``{"ev":"file","req":R,"path":P,"data_b64":..,"size":total,"last_modified":..,
    "offset":..}``; regular files only, opened ``O_NONBLOCK`` (a FIFO never blocks the agent);
    a file with several hard links only when every link is inside ``within`` (or the root);
    at most 4 MiB per request (the caller pages); ``length`` 0 reads properties only.
    ``{"op":"delete_file","req":R,"path":P,"recursive":bool}`` -> ``{"ev":"file_deleted",
    "req":R,"path":P}``; a directory needs ``recursive`` unless empty; a symlink is removed
    itself, never its target. ``run``, ``delete`` and ``delete_file`` refuse paths under
    ``.agent`` (the agent's own state).
    Each of the three takes an optional ``"within":D`` (root-relative): the path must then lie
    inside ``D`` (a task's directory), not merely inside the root.
    Errors: ``{"ev":"error","op":..,"req":R,"code":"FileNotFound"|"OperationInvalid",
    "message":..}``.

``ping`` -> ``{"ev":"pong","time":..,"running":[keys],"adopted":[keys],"load":[1,5,15],
    "memory_available_bytes":int|null,"disk_free_bytes":int|null}``.

``metrics`` ``{"op":"metrics","req":R}`` -> ``{"ev":"metrics","req":R,"time":..,"interval":..,
    "cpu_percent":..,"memory_bytes":..,"disk_bytes":..,"disk_read_bytes":..,
    "disk_write_bytes":..,"disk_read_ops":..,"disk_write_ops":..,"net_in_bytes":..,
    "net_out_bytes":..}``: the machine's resource use, read from /proc. ``cpu_percent`` (0-100,
    all CPUs) covers the time since the previous ``metrics`` request (since boot for the first);
    ``memory_bytes`` is memory in use (MemTotal - MemAvailable) and ``disk_bytes`` the space
    used on the file system of the root, both now; the ``disk_*`` counters (whole physical
    disks, 512-byte sectors) and ``net_*`` counters (every interface but ``lo``) are the
    increase since the previous request, ``interval`` seconds ago -- ``null`` (as is
    ``interval``) on the first request of the agent. Anything that cannot be read is ``null``.

``shutdown`` ``{"op":"shutdown","mode":"drain"|"kill"}``: drain stops accepting runs and exits
    once its own running tasks have ended and been recorded; kill SIGKILLs every task process
    group (recorded as killed) and exits. Before exiting the agent emits
    ``{"ev":"bye","reason":"drain"|"kill"|"eof"|"signal"|"orphan"}``.

Node users (root only; otherwise every request is refused with ``OperationNotValidOnNode``):
``{"op":"add_user","req":R,"name":N,"ssh_public_key":K|null,"password":P|null,"expiry":T,
"admin":bool}``, ``{"op":"update_user","req":R,"name":N,"ssh_public_key":..,"password":..,
"expiry":T}`` (replaces all three), ``{"op":"delete_user","req":R,"name":N}`` ->
``{"ev":"user","op":..,"req":R,"name":N}``; ``{"op":"remove_users","req":R}`` ->
``{"ev":"user","op":"remove_users","req":R,"removed":[names]}``. ``N`` matches
``^[a-z_][a-z0-9_-]{0,30}$``, ``K`` is one ``<type> <base64>`` line, ``P`` one line (set with
``chpasswd`` on stdin; none: ``*``). Users are made with ``useradd -m`` and removed with
``userdel -f -r`` (their processes killed first), from argument lists; a name that exists and is
not in ``.agent/users.json`` (the users this root's agents made) is ``NodeUserExists`` and is
never changed or removed; an unknown one is ``NodeUserNotFound``. ``admin`` writes
``/etc/sudoers.d/prefect-batch-<name>`` (refused when that directory is missing).
``~/.ssh/authorized_keys`` is written 0600 in a 0700 ``.ssh`` owned by the user, opened without
following links and replaced by rename. On ``hello`` and ``ping`` users whose expiry has passed
are removed, each reported as ``{"ev":"user_expired","name":N}``.

Spot notices (``--imds-url URL``, EC2 spot instances only): a thread polls the instance metadata
service (IMDSv2) every ``--imds-poll-seconds`` (default 5): a session token from ``PUT
/latest/api/token`` (``X-aws-ec2-metadata-token-ttl-seconds``), sent as
``X-aws-ec2-metadata-token`` with ``GET /latest/meta-data/spot/instance-action`` and ``GET
/latest/meta-data/events/recommendations/rebalance``; 404 means no notice, 401 fetches a new
token once. Every request has ``--imds-timeout-seconds`` (default 2) for its connect and each
read, and never goes through a proxy; failures are logged to stderr once and polled again. A
notice is emitted unsolicited, once while its content stays the same:
``{"ev":"spot_notice","notice":"interruption"|"rebalance","detail":<the JSON body>,
"action":"terminate"|"stop"|"hibernate"|null,"at":<its time>|null}``. An event a service does
not know is ignored there, so this needs no new protocol version.

Orphan timeout (``--orphan-timeout-seconds N``, default 0: never): contact is any request line
from the service (the engine pings every node it drives, every ``heartbeat_seconds``); every
agent on the root touches ``.agent/contact`` on contact (at most once a second), so an agent
draining after its session dropped counts the contact of the next agent on the same root. With
no contact anywhere for ``N`` seconds the agent kills every task (recorded as killed), drains,
says ``bye`` with reason ``orphan`` and runs ``--orphan-command`` (split like a shell would, run
without one; default ``shutdown -h now``, through ``sudo -n`` unless root; its output goes to
stderr; waited for at most 120 s), then exits: a service that is gone does not leave a machine
running for ever.

Command line: ``agent.py --root DIR [--reaper auto|pidfd|sigchld] [--spawn auto|posix_spawn|popen]
[--prep-threads N] [--prep-mode auto|threads|inline] [--imds-url URL] [--imds-poll-seconds S]
[--imds-timeout-seconds S] [--orphan-timeout-seconds N] [--orphan-command CMD]``; the defaults
pick the fastest mechanism available (pidfd needs Linux >= 5.3 and Python >= 3.9; posix_spawn
needs POSIX_SPAWN_SETSID).

Stdin EOF is a drain: tasks run in their own sessions, so they keep running when the session
drops; the agent supervises them to the end, records their results and exits (events it cannot
write any more are dropped: the records hold them). SIGTERM/SIGINT also drain; SIGHUP is
ignored. Adopted tasks are not waited for when draining.

What the agent does not do: it does not isolate tasks (they run as the agent's user), it does not
kill processes that leave their process group (``setsid``) and it does not kill a task's
leftover background processes when the main process exits normally. Records are written with
rename but not fsync'd: they survive the agent dying, not the machine losing power.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import errno
import heapq
import itertools
import json
import os
import queue
import re
import select
import selectors
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

AGENT_VERSION = "0.1.0"
PROTOCOL_VERSION = 1
MAX_READ_BYTES = 4 * 1024 * 1024
KEY_RE = re.compile(r"\A[A-Za-z0-9_.-]{1,128}\Z")
ADOPT_POLL_SECONDS = 0.25
OWNER_GRACE_SECONDS = 5.0
MAX_KILL_GRACE_SECONDS = 600.0

_NOT_FOUND = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENAMETOOLONG)
_NOT_EXECUTABLE = (errno.EACCES, errno.ENOEXEC, errno.EPERM, errno.EISDIR, errno.ETXTBSY)
_OPEN_W = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
_OPEN_R = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
_OPEN_APPEND = os.O_WRONLY | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
STAMP_AFTER_SECONDS = 1.0
IMDS_POLL_SECONDS = 5.0
IMDS_TIMEOUT_SECONDS = 2.0
ORPHAN_COMMAND_TIMEOUT_SECONDS = 120.0
PREP_INLINE_SECONDS = 0.0002
# Signals the agent ignores or handles: a task starts with their default dispositions.
_SIGDEF = tuple(
    s
    for s in (
        getattr(signal, name, None)
        for name in ("SIGHUP", "SIGINT", "SIGQUIT", "SIGTERM", "SIGPIPE", "SIGXFSZ", "SIGCHLD")
    )
    if s is not None
)


class _Invalid(Exception):
    """A request that cannot be carried out; ``code`` is the protocol error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _proc_start(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot (/proc), or None where unknown."""
    info = _proc_stat(pid)
    return info[1] if info else None


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state letter, start time) of ``pid`` from /proc/<pid>/stat, None if unreadable."""
    try:
        fd = os.open(f"/proc/{pid}/stat", _OPEN_R)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(b")") + 2 :].split()
    if len(rest) < 20:
        return None
    return rest[0].decode("ascii", "replace"), rest[19].decode("ascii", "replace")


_BOOT: list[float] = []


def _ticks_to_wall(ticks: str) -> float | None:
    """Wall-clock time of a /proc start time (clock ticks since boot), None where unknown."""
    try:
        if not _BOOT:
            with open("/proc/stat", "rb") as f:
                for line in f:
                    if line.startswith(b"btime "):
                        _BOOT.append(float(line.split()[1]))
                        _BOOT.append(float(os.sysconf("SC_CLK_TCK")))
                        break
        return _BOOT[0] + int(ticks) / _BOOT[1]
    except (OSError, ValueError, IndexError, ZeroDivisionError):
        return None


def _alive(pid: Any, start: Any, wall: Any = None) -> bool:
    """Whether ``pid`` is a live (not zombie) process that is the one a record names.

    ``start`` is its /proc start time (exact); without it, ``wall`` (the recorded wall-clock
    start) must match the process's start within two seconds.
    """
    if not isinstance(pid, int) or pid <= 0:
        return False
    info = _proc_stat(pid)
    if info is None:
        if os.path.isdir("/proc/self"):
            return False
        try:  # no /proc on this system: fall back to a signal-0 probe
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    state, started = info
    if state in ("Z", "X"):
        return False
    if start is not None:
        return str(start) == started
    if isinstance(wall, (int, float)):
        began = _ticks_to_wall(started)
        return began is None or abs(began - wall) < 2.0
    return True


def _exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return 128  # stopped/continued statuses are never asked for; keep the type stable


def _meminfo(field: str) -> int | None:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(field.encode() + b":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _sysconf_bytes(pages: str) -> int | None:
    try:
        return int(os.sysconf(pages)) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def _cpu_count() -> int:
    getaff = getattr(os, "sched_getaffinity", None)
    if getaff is not None:
        try:
            return len(getaff(0))
        except OSError:
            pass
    return os.cpu_count() or 1


# ---------------------------------------------------------------------- file transfers
#
# Resource files are downloaded before a task's command runs and output files uploaded after
# its process exits, on worker threads so the event loop never waits on the network. The
# service sends plain URLs (S3 objects as presigned URLs): the node holds no storage
# credentials. Every path is checked against the task's directory after symlinks are resolved.

DOWNLOAD_THREADS = 8
TRANSFER_ATTEMPTS = 3
TRANSFER_TIMEOUT_SECONDS = 60.0
DISK_RESERVE_BYTES = 64 << 20
"""Downloads never leave less than this free on the node's disk: the task fails, not the node."""
DISK_FULL_KEEP_BYTES = 1 << 20
"""What a ``DiskFull`` task keeps of its stdout.txt and stderr.txt (their first bytes)."""
_CHUNK = 1 << 20


class _TransferError(Exception):
    """A download or upload that failed: Azure's code, category and the file it concerns."""

    def __init__(self, code: str, message: str, category: str = "usererror", **values: str):
        super().__init__(message)
        self.code = code
        self.message = message
        self.category = category
        self.values = values
        self.retry = False

    def to_error(self, phase: str) -> dict[str, Any]:
        return {
            "code": self.code,
            "message": self.message,
            "category": self.category,
            "values": self.values,
            "phase": phase,
        }


def _inside_dir(real: str, top: str) -> bool:
    return real == top or real.startswith(top + os.sep)


# -- files below a directory, never following a link --------------------------------------
# Shared with the service, which reads local nodes' files with the same rules (so these are
# public and raise PathRefused, not the protocol's _Invalid).

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_NOFOLLOW | _O_CLOEXEC
# O_NONBLOCK: opening a FIFO a task left behind returns at once instead of waiting for a writer.
_LEAF_FLAGS = os.O_RDONLY | _O_NOFOLLOW | os.O_NONBLOCK | _O_CLOEXEC
MAX_LINK_SCAN = 20000
"""Entries a hard-link check looks at before it gives up (and refuses the file)."""


class PathRefused(Exception):
    """A file operation refused; ``code`` is ``FileNotFound`` or ``OperationInvalid``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _refusal(dir_fd: int, part: str, rel: str, exc: OSError) -> PathRefused:
    """Why opening ``part`` (below ``dir_fd``) failed, as the caller should hear it."""
    try:
        mode = os.lstat(part, dir_fd=dir_fd).st_mode
    except OSError:
        return PathRefused("FileNotFound", f"{rel}: no such file or directory")
    if stat.S_ISLNK(mode):
        return PathRefused("OperationInvalid", f"{rel}: {part} is a symbolic link (not followed)")
    if exc.errno in (errno.ENOTDIR, errno.ENOENT):
        return PathRefused("FileNotFound", f"{rel}: no such file or directory")
    if exc.errno == errno.ENXIO or not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return PathRefused("OperationInvalid", f"{rel} is not a regular file or a directory")
    return PathRefused("OperationInvalid", f"{rel}: {exc.strerror or exc}")


def open_beneath(top: str, rel: str, *, leaf: bool = True) -> tuple[int, os.stat_result]:
    """Open ``top/rel`` (``rel`` ``/``-separated, ``""`` for ``top``) without following any
    symlink below ``top``: (descriptor, ``fstat`` of it), the caller closes the descriptor.

    Each component is opened relative to its parent's descriptor with ``O_NOFOLLOW``, so a task
    cannot swap a component for a link between a check and the open. The answer is a regular
    file or a directory (with ``leaf=False``: a directory); FIFOs, sockets and devices are
    refused, and the last component is opened ``O_NONBLOCK``.
    """
    parts = [p for p in rel.split("/") if p]
    try:
        fd = os.open(top, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _O_CLOEXEC)
    except OSError as exc:
        raise PathRefused("FileNotFound", f"{rel or '.'}: {exc.strerror or exc}") from None
    try:
        for i, part in enumerate(parts):
            flags = _LEAF_FLAGS if leaf and i == len(parts) - 1 else _DIR_FLAGS
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                raise _refusal(fd, part, rel, exc) from None
            os.close(fd)
            fd = child
        st = os.fstat(fd)
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise PathRefused("OperationInvalid", f"{rel} is not a regular file or a directory")
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def check_links(
    top: str,
    rel: str,
    st: os.stat_result,
    limit: int = MAX_LINK_SCAN,
    deadline: float | None = None,
) -> None:
    """Refuse a regular file with several hard links unless every link is inside ``top``.

    A task may hard-link any file it can reach (``ln /etc/passwd wd/pw``); a file whose links
    are all found below ``top`` (the task's directory) is the task's own. Links are counted by
    walking ``top`` without following symlinks; past ``limit`` entries (or ``deadline``, a
    ``time.monotonic()`` value) the file is refused.
    """
    if not stat.S_ISREG(st.st_mode) or st.st_nlink <= 1:
        return
    found = seen = 0
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            seen += 1
            if seen > limit:
                break
            try:
                other = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if (other.st_ino, other.st_dev) == (st.st_ino, st.st_dev):
                found += 1
        if found >= st.st_nlink or seen > limit:
            break
        if deadline is not None and time.monotonic() > deadline:
            break
    if found < st.st_nlink:
        raise PathRefused(
            "OperationInvalid",
            f"{rel} has {st.st_nlink} hard links and not all of them are inside the directory",
        )


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    return "link" if stat.S_ISLNK(mode) else "other"


def scan_beneath(
    top: str,
    rel: str,
    recursive: bool,
    skip_root: tuple[str, ...] = (),
    deadline: float | None = None,
) -> list[tuple[str, os.stat_result, str]]:
    """(name relative to ``rel``, ``lstat``, kind) of the entries of the directory ``top/rel``.

    Kind is ``dir``, ``file``, ``link`` or ``other`` (a FIFO, socket or device). Nothing is
    followed: links are listed as links, whatever they point at (nothing, themselves, outside),
    and only real directories are descended into. Names that are not valid UTF-8 cannot be
    asked for by name, so they are left out. A ``rel`` that is a file lists that file. Past
    ``deadline`` (a ``time.monotonic()`` value) it stops with ``PathRefused("ServerBusy")``.
    """
    fd, st = open_beneath(top, rel)
    out: list[tuple[str, os.stat_result, str]] = []
    if not stat.S_ISDIR(st.st_mode):
        os.close(fd)
        return [(os.path.basename(rel), st, "file")]
    stack = [(fd, "")]
    try:
        while stack:
            dfd, prefix = stack.pop()
            if deadline is not None and time.monotonic() > deadline:
                os.close(dfd)
                raise PathRefused("ServerBusy", "the directory is too large to list in time")
            try:
                _scan_one(dfd, prefix, recursive, skip_root, out, stack)
            finally:
                os.close(dfd)
    finally:
        for dfd, _ in stack:
            os.close(dfd)
    out.sort(key=lambda e: e[0])
    return out


def _scan_one(
    dfd: int,
    prefix: str,
    recursive: bool,
    skip_root: tuple[str, ...],
    out: list[tuple[str, os.stat_result, str]],
    stack: list[tuple[int, str]],
) -> None:
    try:
        with os.scandir(dfd) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if not prefix and entry.name in skip_root:
            continue
        try:
            entry.name.encode("utf-8")
            est = entry.stat(follow_symlinks=False)
        except (OSError, UnicodeEncodeError):
            continue
        kind = _kind(est.st_mode)
        out.append((prefix + entry.name, est, kind))
        if kind == "dir" and recursive:
            try:
                child = os.open(entry.name, _DIR_FLAGS, dir_fd=dfd)
            except OSError:
                continue
            stack.append((child, prefix + entry.name + "/"))


def remove_beneath(dir_fd: int, name: str) -> None:
    """Remove ``name`` below the directory ``dir_fd``: a directory with all it holds, anything
    else (a link included, never its target) by itself; no link is followed on the way."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError:
        os.unlink(name, dir_fd=dir_fd)
        return
    try:
        with os.scandir(fd) as it:
            names = [e.name for e in it]
        for child in names:
            remove_beneath(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def _safe_target(top: str, rel: str, what: str) -> str:
    """``top/rel`` for a file to write, its parent directories made; never outside ``top``.

    ``rel`` must be relative without ``..``; the deepest existing ancestor is resolved, so a
    symlink (left by an earlier task in a shared directory) cannot lead the file elsewhere.
    """
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or rel.startswith("/") or "\0" in rel or ".." in parts:
        raise _TransferError(
            "ResourceFileCreateFailed", f"{what} must be a relative path: {rel!r}", FilePath=rel
        )
    top_real = os.path.realpath(top)
    parent = os.path.join(top_real, *parts[:-1])
    probe = parent
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not _inside_dir(os.path.realpath(probe), top_real):
        raise _TransferError(
            "ResourceFileCreateFailed", f"{what} escapes the task directory: {rel!r}", FilePath=rel
        )
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise _TransferError(
            "ResourceDirectoryCreateFailed",
            f"cannot create the directory of {rel}: {exc.strerror or exc}",
            "servererror",
            FilePath=rel,
        ) from exc
    if not _inside_dir(os.path.realpath(parent), top_real):
        raise _TransferError(
            "ResourceFileCreateFailed", f"{what} escapes the task directory: {rel!r}", FilePath=rel
        )
    return os.path.join(parent, parts[-1])


def _http_error(exc: BaseException, what: str, phase: str, **values: str) -> _TransferError:
    """Map a urllib failure to Azure's codes; ``retry`` says whether trying again may help."""
    import socket
    import urllib.error

    status = exc.code if isinstance(exc, urllib.error.HTTPError) else None
    transient = status is None or status >= 500 or status == 429
    timed_out = False
    if status is None:
        reason = getattr(exc, "reason", exc)
        timed_out = isinstance(exc, (socket.timeout, TimeoutError)) or isinstance(
            reason, socket.timeout
        )
        message = f"{what}: timed out" if timed_out else f"{what}: {reason}"
    else:
        message = f"{what}: HTTP {status} {getattr(exc, 'reason', '')}"
    category = "servererror" if transient else "usererror"
    if phase == "upload":
        code = "FileUploadFailed"
    elif status == 404:
        code, message = "BlobNotFound", f"{what}: the object does not exist (404)"
    elif status in (401, 403):
        code, message = "BlobAccessDenied", f"{what}: access denied ({status})"
    elif timed_out:
        code = "BlobDownloadTimedOut"
    else:
        code, category = "BlobDownloadMiscError", "servererror"
    err = _TransferError(code, message, category, **values)
    err.retry = transient
    return err


def _with_retries(action: Callable[[], None]) -> None:
    for attempt in range(TRANSFER_ATTEMPTS):
        try:
            action()
            return
        except _TransferError as exc:
            if not exc.retry or attempt == TRANSFER_ATTEMPTS - 1:
                raise
            time.sleep(0.2 * 2**attempt)


def _empty_dir(path: str) -> None:
    """Remove everything in ``path`` (never following a link); what cannot go stays."""
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        target = os.path.join(path, name)
        try:
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target, ignore_errors=True)
            else:
                os.unlink(target)
        except OSError:
            pass


def _tree_bytes(path: str, limit: int = 100_000) -> int:
    """Disk space the tree at ``path`` takes (allocated blocks), never following a link; counts
    at most ``limit`` entries (what lies beyond is not counted)."""
    total, seen, stack = 0, 0, [path]
    while stack and seen < limit:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    seen += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return total


def _free_bytes(path: str) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _download_one(entry: dict[str, Any], wd: str, timeout: float, reserve: int) -> None:
    import urllib.error
    import urllib.request

    rel = entry["path"]
    target = _safe_target(wd, rel, "filePath")
    mode = entry.get("mode")
    partial = f"{target}.part-{os.getpid()}-{threading.get_ident()}"

    def attempt() -> None:
        try:
            response = urllib.request.urlopen(entry["url"], timeout=timeout)
        except (urllib.error.URLError, OSError) as exc:
            raise _http_error(exc, rel, "download", FilePath=rel) from exc
        try:
            length = response.headers.get("Content-Length")
            directory = os.path.dirname(target)
            if length is not None and int(length) > _free_bytes(directory) - reserve:
                raise _TransferError(
                    "ResourceFileCreateFailed",
                    f"{rel}: {int(length)} bytes do not fit on the node's disk",
                    FilePath=rel,
                )
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(partial, flags, 0o600)
            written = 0
            try:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    _write_all(fd, chunk)
                    written += len(chunk)
                    if written % (64 * _CHUNK) < len(chunk) and (_free_bytes(directory) < reserve):
                        raise _TransferError(
                            "ResourceFileCreateFailed",
                            f"{rel}: the node's disk is full",
                            FilePath=rel,
                        )
                os.fchmod(fd, mode if mode is not None else 0o770)
            except OSError as exc:
                code = "ResourceFileCreateFailed"
                if exc.errno == errno.ENOSPC:
                    raise _TransferError(
                        code, f"{rel}: the node's disk is full", FilePath=rel
                    ) from exc
                raise _http_error(exc, rel, "download", FilePath=rel) from exc
            finally:
                os.close(fd)
            if length is not None and written != int(length):
                err = _TransferError(
                    "BlobDownloadMiscError",
                    f"{rel}: got {written} of {length} bytes",
                    "servererror",
                    FilePath=rel,
                )
                err.retry = True
                raise err
            os.replace(partial, target)
        except BaseException:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise
        finally:
            response.close()

    _with_retries(attempt)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _download_all(entries: list[dict[str, Any]], wd: str, timeout: float, reserve: int) -> None:
    """Download every entry (up to ``DOWNLOAD_THREADS`` at once); the first failure wins."""
    if len(entries) == 1:
        _download_one(entries[0], wd, timeout, reserve)
        return
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(min(DOWNLOAD_THREADS, len(entries))) as pool:
        futures = [pool.submit(_download_one, e, wd, timeout, reserve) for e in entries]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]


def _upload_matches(entry: dict[str, Any], task_dir: str) -> list[tuple[str, str]]:
    """``(absolute file, object name)`` for each regular file an output pattern matches."""
    import glob

    wd = task_dir + "/wd"
    top = os.path.realpath(task_dir)
    pattern = entry["pattern"]
    found = glob.glob(glob.escape(wd) + "/" + pattern, recursive=True)
    base = os.path.normpath(os.path.join(wd, entry.get("base") or ""))
    out = []
    for path in sorted(found):
        real = os.path.realpath(path)
        if not _inside_dir(real, top) or not os.path.isfile(real):
            continue  # directories, and symlinks that point out of the task directory
        if entry.get("single"):
            name = entry.get("name") or os.path.basename(path)
        else:
            rel = os.path.relpath(os.path.normpath(path), base)
            prefix = entry.get("name") or ""
            name = f"{prefix}/{rel}" if prefix else rel
        out.append((real, name))
    return out


def _upload_one(target: dict[str, Any], path: str, name: str, timeout: float) -> None:
    import urllib.error
    import urllib.parse
    import urllib.request

    size = os.path.getsize(path)

    def attempt() -> None:
        with open(path, "rb") as f:
            if target["method"] == "POST":
                fields = dict(target.get("fields") or {})
                fields["key"] = "/".join(p for p in (target.get("key_prefix"), name) if p)
                boundary = "----prefect-batch-" + base64.b16encode(os.urandom(12)).decode()
                head = b"".join(
                    f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n'.encode()
                    + str(v).encode()
                    + b"\r\n"
                    for k, v in fields.items()
                )
                head += (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                    f'filename="{os.path.basename(path)}"\r\n'
                    "Content-Type: application/octet-stream\r\n\r\n"
                ).encode()
                tail = f"\r\n--{boundary}--\r\n".encode()

                def body() -> Any:
                    yield head
                    while True:
                        chunk = f.read(_CHUNK)
                        if not chunk:
                            break
                        yield chunk
                    yield tail

                request = urllib.request.Request(
                    target["url"],
                    data=body(),
                    method="POST",
                    headers={
                        "Content-Type": f"multipart/form-data; boundary={boundary}",
                        "Content-Length": str(len(head) + size + len(tail)),
                    },
                )
            else:
                url = target["url"]
                if not target.get("exact"):
                    parts = urllib.parse.urlsplit(url)
                    path_part = parts.path.rstrip("/") + "/" + urllib.parse.quote(name)
                    url = urllib.parse.urlunsplit(parts._replace(path=path_part))
                headers = {"Content-Type": "application/octet-stream"}
                headers.update(target.get("headers") or {})
                headers["Content-Length"] = str(size)
                request = urllib.request.Request(url, data=f, method="PUT", headers=headers)
            try:
                urllib.request.urlopen(request, timeout=timeout).close()
            except (urllib.error.URLError, OSError) as exc:
                raise _http_error(exc, name, "upload", FilePath=name) from exc

    _with_retries(attempt)


def _upload_all(
    entries: list[dict[str, Any]], task_dir: str, succeeded: bool, timeout: float
) -> dict[str, Any] | None:
    """Upload the output files whose condition holds; log to fileupload{out,err}.txt.

    Returns the first error (as an ``exited`` event's ``upload_error``) or ``None``.
    """
    first: dict[str, Any] | None = None
    with contextlib.ExitStack() as stack:  # (no parenthesized "with": Python 3.8 runs this)
        out = stack.enter_context(open(task_dir + "/fileuploadout.txt", "a"))
        err = stack.enter_context(open(task_dir + "/fileuploaderr.txt", "a"))
        for entry in entries:
            condition = entry.get("condition") or "taskcompletion"
            if (condition == "tasksuccess" and not succeeded) or (
                condition == "taskfailure" and succeeded
            ):
                out.write(f"{entry['pattern']}: skipped ({condition})\n")
                continue
            try:
                matches = _upload_matches(entry, task_dir)
                if not matches:
                    err.write(f"{entry['pattern']}: no file matches\n")
                if entry["target"].get("exact") and len(matches) > 1:
                    raise _TransferError(
                        "FileUploadFailed",
                        f"{entry['pattern']} matches {len(matches)} files but the destination "
                        "URL names one object",
                        FilePattern=entry["pattern"],
                    )
                for path, name in matches:
                    _upload_one(entry["target"], path, name, timeout)
                    out.write(f"{os.path.relpath(path, task_dir)} -> {name}\n")
            except _TransferError as exc:
                exc.code = "FileUploadFailed"
                exc.values.setdefault("FilePattern", entry["pattern"])
                err.write(f"{entry['pattern']}: {exc.message}\n")  # message names the file
                if first is None:
                    first = exc.to_error("upload")
            except OSError as exc:
                err.write(f"{entry['pattern']}: {exc}\n")
                if first is None:
                    first = _TransferError(
                        "FileUploadFailed",
                        f"{entry['pattern']}: {exc}",
                        "servererror",
                        FilePattern=entry["pattern"],
                    ).to_error("upload")
    return first


# ------------------------------------------------------------------ confinement
# Tasks of a confined agent (``--confine``) run under Linux Landlock (kernel >= 5.13), applied in
# the child just before exec: they may read and execute the system's read-only trees, the
# interpreter and the paths the service names (``--task-read``); read and write their own task
# directory, the node's shared and startup directories, the job's preparation directory and the
# paths the service names (``--task-path``); and nothing else: not the node root, other tasks,
# other nodes, the service's home, nor any /proc entry. Capabilities are dropped first (an empty
# bounding set and no_new_privs), so a task of an agent running as root holds none after exec.
# Paths given to ``--task-read``, ``--task-path`` and ``--protect`` may start with ``~`` (the
# agent's home, as on a remote host whose paths the service does not know). The agent's own
# interpreter trees and the directories of its own ``PATH`` (with a pyenv root above
# ``shims``) are readable even inside a protected tree (a Python under the protected home of
# an SSH user), though never a protected tree itself nor one inside them. With
# ``--confine-optional`` an agent on a kernel without Landlock runs tasks unconfined and says
# why in ``hello`` (``"unconfined"``) instead of refusing to start.
# ctypes only, so the agent stays standard library. Syscall numbers 444-446 are the same on
# every architecture (they came after the syscall tables were unified).

_LL_CREATE, _LL_ADD, _LL_RESTRICT = 444, 445, 446
_LL_EXEC, _LL_WRITE, _LL_READ, _LL_READ_DIR = 1, 2, 4, 8
_LL_FILE_ONLY = _LL_EXEC | _LL_WRITE | _LL_READ | (1 << 14) | (1 << 15)  # + TRUNCATE, IOCTL_DEV
_LL_RO = _LL_EXEC | _LL_READ | _LL_READ_DIR
_LL_ALL = (1 << 16) - 1
_PR_SET_DUMPABLE, _PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS = 4, 24, 38
SYSTEM_READ_PATHS = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/sys",
    "/run/systemd/resolve",
)  # fmt: skip
"""Trees every confined task may read and execute (plus the interpreter's prefix)."""
DEVICE_FILES = (("/dev/null", _LL_READ | _LL_WRITE), ("/dev/zero", _LL_READ),
                ("/dev/full", _LL_READ | _LL_WRITE), ("/dev/urandom", _LL_READ),
                ("/dev/random", _LL_READ))  # fmt: skip


def set_not_dumpable() -> bool:
    """``PR_SET_DUMPABLE=0``: same-user processes cannot read this one's environ or memory."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def interpreter_trees() -> list:
    """The trees of the Python running this agent (its prefixes and its executable's)."""
    trees = {sys.prefix, sys.base_prefix, sys.exec_prefix,
             os.path.dirname(os.path.dirname(os.path.realpath(sys.executable)))}  # fmt: skip
    return sorted(t for t in trees if t)


def _inside(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


class Confinement:
    """Builds a Landlock ruleset per task in the agent; the child only applies it.

    Args:
        read_paths: Extra trees tasks may read and execute.
        write_paths: Extra trees tasks may read and write.
        protect: Trees no rule may reach (the service's home): a tree that holds one is
            allowed except for it (its siblings, walked from the top).
    """

    def __init__(self, read_paths: list, write_paths: list, protect: list) -> None:
        import ctypes

        self.ct = ctypes
        self._common_rules: dict = {}  # a task PATH -> its held rules (see _common)
        libc = ctypes.CDLL(None, use_errno=True)
        self._syscall = libc.syscall
        self._syscall.restype = ctypes.c_long
        self._prctl = libc.prctl
        self._prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4
        self.abi = max(
            int(self._syscall(_LL_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))), 0
        )
        if self.abi < 1:
            raise OSError(errno.ENOSYS, "Landlock is not available on this kernel")
        self.fs = (1 << {1: 13, 2: 14, 3: 15, 4: 15}.get(self.abi, 16)) - 1
        self.scoped = 3 if self.abi >= 6 else 0  # signals and abstract sockets of others

        class Attr(ctypes.Structure):
            _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64),
                        ("scoped", ctypes.c_uint64)]  # fmt: skip

        class Beneath(ctypes.Structure):
            _pack_ = 1
            _fields_ = [("access", ctypes.c_uint64), ("fd", ctypes.c_int32)]

        self.Attr, self.Beneath = Attr, Beneath
        protected = (os.path.realpath(os.path.expanduser(p)) for p in protect)
        self.protect = [p for p in protected if p != "/"]  # a home of "/" protects nothing
        self.cap_last = self._cap_last() if self._has_caps() else -1
        self.base: list = []
        for path in SYSTEM_READ_PATHS:
            self.base += self._allowed(path, _LL_RO)
        for path in interpreter_trees():  # readable even inside a protected tree
            self.base += self._allowed(path, _LL_RO, own=True)
        self.base += self._path_rules(os.environ.get("PATH") or "", own=True)  # the agent's
        for path in read_paths:
            self.base += self._allowed(os.path.expanduser(path), _LL_RO)
        for path in write_paths:
            self.base += self._allowed(os.path.expanduser(path), _LL_ALL)

    @staticmethod
    def _has_caps() -> bool:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("CapEff:"):
                        return int(line.split()[1], 16) != 0
        except OSError:
            pass
        return os.geteuid() == 0

    @staticmethod
    def _cap_last() -> int:
        try:
            with open("/proc/sys/kernel/cap_last_cap") as f:
                return int(f.read())
        except (OSError, ValueError):
            return 63

    def _allowed(self, path: str, access: int, *, own: bool = False) -> list:
        """Rules for ``path``, leaving out every protected tree (and paths inside one).

        ``own``: ``path`` is the agent's interpreter or in its ``PATH``, allowed even inside a
        protected tree (not when it is one, nor a protected tree inside it).
        """
        real = os.path.realpath(path)
        if not os.path.exists(real):
            return []
        if any(real == p if own else _inside(real, p) for p in self.protect):
            return []
        held = [p for p in self.protect if _inside(p, real) and p != real]
        if not held:
            return [(real, access)]
        out: list = []
        try:
            names = os.listdir(real)
        except OSError:
            return []
        for name in names:  # the tree holds a protected path: allow its siblings only
            out += self._allowed(os.path.join(real, name), access)
        return out

    def _path_rules(self, path_var: str, *, own: bool = False) -> list:
        """Rules for the directories of a task's ``PATH`` (and a pyenv root above ``shims``).

        ``own``: the agent's own ``PATH``, readable even inside a protected tree (a task's
        ``PATH`` is the task's to choose, so its entries never are).
        """
        rules: list = []
        for entry in path_var.split(":"):
            if entry.startswith("/"):
                rules += self._allowed(entry, _LL_RO, own=own)
                if os.path.basename(entry.rstrip("/")) == "shims":  # pyenv: its root too
                    rules += self._allowed(os.path.dirname(entry.rstrip("/")), _LL_RO, own=own)
        return rules

    def task_rules(self, dirs: list, env: dict) -> list:
        """The rules of one task: the base, its directories, and its PATH's directories."""
        rules = list(self.base) + self._path_rules(env.get("PATH") or "")
        for d in dirs:
            rules.append((os.path.realpath(d), _LL_ALL))
        rules += list(DEVICE_FILES)
        return rules

    def _held(self, rules: list) -> list:
        """``(O_PATH descriptor, access)`` for each rule whose path exists, opened once.

        The descriptors stay open for the agent's life, so a task's ruleset is built from
        them with one syscall per rule, without a path walk.
        """
        held = []
        for path, access in rules:
            try:
                pfd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            isdir = stat.S_ISDIR(os.fstat(pfd).st_mode)
            held.append((pfd, access & (self.fs if isdir else self.fs & _LL_FILE_ONLY)))
        return held

    def _common(self, path_var: str) -> list:
        """The held rules every task with this ``PATH`` shares (the base, PATH, devices)."""
        cache = self._common_rules
        found = cache.get(path_var)
        if found is None:
            if len(cache) >= 32:  # a bounded cache: tasks rarely vary their PATH
                for pfd, _ in cache.pop(next(iter(cache))):
                    os.close(pfd)
            rules = list(self.base) + self._path_rules(path_var) + list(DEVICE_FILES)
            found = cache[path_var] = self._held(rules)
        return found

    def build_for(self, dirs: list, env: dict) -> int:
        """A task's ruleset (as ``build(task_rules(dirs, env))``) from held descriptors."""
        own = self._held([(os.path.realpath(d), _LL_ALL) for d in dirs])
        try:
            return self._ruleset(self._common(env.get("PATH") or "") + own)
        finally:
            for pfd, _ in own:
                os.close(pfd)

    def build(self, rules: list) -> int:
        """A ruleset file descriptor (O_CLOEXEC) for ``rules``; the caller closes it."""
        held = self._held(rules)
        try:
            return self._ruleset(held)
        finally:
            for pfd, _ in held:
                os.close(pfd)

    def _ruleset(self, held: list) -> int:
        ct = self.ct
        attr = self.Attr(self.fs, 0, self.scoped)
        fd = int(self._syscall(_LL_CREATE, ct.byref(attr), ct.c_size_t(24), ct.c_uint32(0)))
        if fd < 0:
            e = ct.get_errno()
            raise OSError(e, "landlock_create_ruleset: " + os.strerror(e))
        try:
            for pfd, acc in held:
                rule = self.Beneath(acc, pfd)
                if self._syscall(_LL_ADD, fd, 1, ct.byref(rule), 0) < 0:
                    e = ct.get_errno()
                    raise OSError(e, "landlock_add_rule: " + os.strerror(e))
        except BaseException:
            os.close(fd)
            raise
        return fd

    def preexec(self, ruleset: int) -> Callable[[], None]:
        """What the child runs before exec: drop capabilities, no_new_privs, restrict."""
        prctl, syscall, ct = self._prctl, self._syscall, self.ct
        caps = range(self.cap_last + 1)
        fd, flags = ct.c_int(ruleset), ct.c_uint32(0)

        def apply() -> None:
            for cap in caps:  # an empty bounding set: root gets no capability at exec
                if prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and ct.get_errno() != errno.EINVAL:
                    raise OSError(ct.get_errno(), "PR_CAPBSET_DROP")
            if prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
                raise OSError(ct.get_errno(), "PR_SET_NO_NEW_PRIVS")
            if syscall(_LL_RESTRICT, fd, flags) != 0:
                raise OSError(ct.get_errno(), "landlock_restrict_self")

        return apply


# ---------------------------------------------------------------------- instance metadata
#
# On an EC2 spot instance the agent polls the instance metadata service (IMDSv2) on a thread of
# its own and hands what it finds to the event loop, which emits it as ``spot_notice``.

IMDS_TOKEN_TTL_SECONDS = 21600
IMDS_NOTICES = (
    ("interruption", "/latest/meta-data/spot/instance-action"),
    ("rebalance", "/latest/meta-data/events/recommendations/rebalance"),
)
"""(notice, metadata path): a 404 means there is no such notice now."""
_IMDS_MAX_BODY = 1 << 16


class ImdsError(Exception):
    """The metadata service answered with an unexpected status, or not at all."""


class ImdsPoller:
    """Reads spot notices from an IMDSv2 endpoint; :meth:`poll` returns the new ones as events.

    Every request has ``timeout`` seconds (connect and each read), never goes through a proxy,
    and carries a session token (``PUT /latest/api/token`` with
    ``X-aws-ec2-metadata-token-ttl-seconds``), fetched again before it expires or when a
    request is answered 401. A notice is reported once while its content stays the same.
    """

    def __init__(self, base_url: str, timeout: float = 2.0) -> None:
        import urllib.request

        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.token: str | None = None
        self.token_expires = 0.0
        self.seen: dict[str, bytes] = {}
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            self.base + path,
            data=b"" if method == "PUT" else None,
            headers=headers,
            method=method,
        )
        try:
            with self.opener.open(request, timeout=self.timeout) as response:
                return int(response.status), response.read(_IMDS_MAX_BODY)
        except urllib.error.HTTPError as exc:
            exc.close()
            return int(exc.code), b""
        except (OSError, ValueError) as exc:  # refused, timed out, a broken answer
            raise ImdsError(f"{method} {path}: {exc}") from exc

    def _fetch_token(self) -> str:
        ttl = str(IMDS_TOKEN_TTL_SECONDS)
        status, body = self._request(
            "PUT", "/latest/api/token", {"X-aws-ec2-metadata-token-ttl-seconds": ttl}
        )
        if status != 200 or not body.strip():
            raise ImdsError(f"PUT /latest/api/token: HTTP {status}")
        self.token = body.decode("ascii", "replace").strip()
        self.token_expires = time.monotonic() + IMDS_TOKEN_TTL_SECONDS - 60
        return self.token

    def get(self, path: str) -> bytes | None:
        """The body at ``path``; None for a 404 (no such notice)."""
        for attempt in (1, 2):
            token = self.token
            if token is None or time.monotonic() >= self.token_expires:
                token = self._fetch_token()
            status, body = self._request("GET", path, {"X-aws-ec2-metadata-token": token})
            if status == 200:
                return body
            if status == 404:
                return None
            if status == 401 and attempt == 1:  # the token expired or was revoked
                self.token = None
                continue
            raise ImdsError(f"GET {path}: HTTP {status}")
        return None  # not reached

    def poll(self) -> list[dict[str, Any]]:
        """Notices that appeared (or changed) since the last poll, as ``spot_notice`` events."""
        found = []
        for notice, path in IMDS_NOTICES:
            body = self.get(path)
            if body is None:
                self.seen.pop(notice, None)
                continue
            if self.seen.get(notice) == body:
                continue
            self.seen[notice] = body
            try:
                detail: Any = json.loads(body)
            except ValueError:
                detail = body.decode("utf-8", "replace")
            event: dict[str, Any] = {"ev": "spot_notice", "notice": notice, "detail": detail}
            if isinstance(detail, dict):
                event["action"] = detail.get("action")
                event["at"] = detail.get("time") or detail.get("noticeTime")
            found.append(event)
        return found


# ------------------------------------------------------------------ node users
# Login users made on request (``add_user``...): only by an agent running as root, only users it
# made itself (recorded in ``.agent/users.json``), removed when they expire (checked on every
# ``hello`` and ``ping``) and on ``remove_users`` (the node leaves or is reimaged). Every
# program runs from an argv list, never a shell; names and keys are checked again here.

USER_NAME_RE = re.compile(r"\A[a-z_][a-z0-9_-]{0,30}\Z")
SSH_KEY_RE = re.compile(
    r"\A(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com|"
    r"sk-ecdsa-sha2-nistp256@openssh\.com) [A-Za-z0-9+/]+={0,2}\Z"
)
SUDOERS_DIR = "/etc/sudoers.d"
_USER_COMMENT = "prefect-batch node user"


class NodeUsers:
    """The login users this node's agents made, with their expiry (a JSON file under .agent)."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "users.json")

    @staticmethod
    def check_root() -> None:
        if os.geteuid() != 0:
            raise _Invalid(
                "OperationNotValidOnNode",
                f"the node's agent runs as uid {os.geteuid()}, not root: it cannot manage users",
            )

    def load(self) -> dict[str, Any]:
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save(self, users: dict[str, Any]) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(users, f)
        os.replace(tmp, self.path)

    @staticmethod
    def _name(msg: dict[str, Any]) -> str:
        name = msg.get("name")
        if not isinstance(name, str) or not USER_NAME_RE.match(name):
            raise _Invalid("InvalidPropertyValue", f"not a valid user name: {name!r}")
        return name

    @staticmethod
    def _fields(msg: dict[str, Any]) -> tuple[str | None, str | None, float]:
        key, password, expiry = msg.get("ssh_public_key"), msg.get("password"), msg.get("expiry")
        if key is not None and (not isinstance(key, str) or not SSH_KEY_RE.match(key)):
            raise _Invalid("InvalidPropertyValue", "sshPublicKey is not an OpenSSH public key")
        if password is not None and (
            not isinstance(password, str) or not password or any(c in password for c in "\0\r\n")
        ):
            raise _Invalid("InvalidPropertyValue", "password must be one line of text")
        if isinstance(expiry, bool) or not isinstance(expiry, (int, float)):
            raise _Invalid("InvalidPropertyValue", "expiry must be a UNIX time")
        return key, password, float(expiry)

    @staticmethod
    def _run(argv: list[str], stdin: str | None = None) -> None:
        try:
            done = subprocess.run(
                argv,
                input=None if stdin is None else stdin.encode(),
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                timeout=60,
                check=False,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            raise _Invalid("OperationNotValidOnNode", f"{argv[0]} failed: {exc}") from None
        if done.returncode != 0:
            err = done.stderr.decode(errors="replace").strip()[-300:]
            raise _Invalid(
                "OperationNotValidOnNode", f"{argv[0]} exited with {done.returncode}: {err}"
            )

    def add(self, msg: dict[str, Any]) -> None:
        self.check_root()
        name = self._name(msg)
        key, password, expiry = self._fields(msg)
        admin = msg.get("admin") is True
        users = self.load()
        if name in users or _user_exists(name):
            raise _Invalid("NodeUserExists", f"a user named {name} exists on the node")
        if admin and not os.path.isdir(SUDOERS_DIR):
            raise _Invalid(
                "OperationNotValidOnNode",
                f"isAdmin needs sudo on the node ({SUDOERS_DIR} is missing)",
            )
        shell = "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"
        # "*": no password login until one is set (a locked "!" would also refuse keys).
        self._run(["useradd", "-m", "-s", shell, "-c", _USER_COMMENT, "-p", "*", "--", name])
        users[name] = {"expiry": expiry, "admin": admin}
        self._save(users)
        try:
            self._apply(name, key, password)
            if admin:
                self._sudoers(name, True)
        except BaseException:
            self._remove(name, users)
            raise

    def update(self, msg: dict[str, Any]) -> None:
        self.check_root()
        name = self._name(msg)
        key, password, expiry = self._fields(msg)
        users = self.load()
        if name not in users:
            raise _Invalid("NodeUserNotFound", f"the node has no user named {name}")
        self._apply(name, key, password)
        users[name]["expiry"] = expiry
        self._save(users)

    def delete(self, msg: dict[str, Any]) -> None:
        self.check_root()
        name = self._name(msg)
        users = self.load()
        if name not in users:
            raise _Invalid("NodeUserNotFound", f"the node has no user named {name}")
        self._remove(name, users)

    def remove_all(self) -> list[str]:
        users = self.load()
        if not users or os.geteuid() != 0:
            return []
        return self._remove_each(sorted(users), users)

    def expire(self, now: float) -> list[str]:
        """Remove the users whose expiry has passed; their names."""
        users = self.load()
        gone = [n for n, u in users.items() if float(u.get("expiry") or 0) <= now]
        if not gone or os.geteuid() != 0:
            return []
        return self._remove_each(gone, users)

    def _remove_each(self, names: list[str], users: dict[str, Any]) -> list[str]:
        """Remove each of ``names``; one that fails stays recorded (tried again later) and the
        others are still removed. The names removed."""
        removed, failed = [], []
        for name in names:
            try:
                self._remove(name, users)
            except _Invalid as exc:
                failed.append(f"{name}: {exc.message}")
            else:
                removed.append(name)
        if failed:
            sys.stderr.write("agent: cannot remove node users: " + "; ".join(failed) + "\n")
        return removed

    def _remove(self, name: str, users: dict[str, Any]) -> None:
        if not USER_NAME_RE.match(name):  # a hand-edited record: never pass it on
            users.pop(name, None)
            self._save(users)
            return
        uid = _user_uid(name)
        if uid is not None and uid != 0:
            _kill_uid(uid)
        self._sudoers(name, False)
        if uid is not None and uid != 0:
            self._run(["userdel", "-f", "-r", "--", name])
        users.pop(name, None)
        self._save(users)

    def _apply(self, name: str, key: str | None, password: str | None) -> None:
        """Set the user's password (or none) and authorized key (or none)."""
        if password is None:
            self._run(["usermod", "-p", "*", "--", name])
        else:
            self._run(["chpasswd"], stdin=f"{name}:{password}\n")
        self._write_key(name, key)

    @staticmethod
    def _write_key(name: str, key: str | None) -> None:
        """``~/.ssh/authorized_keys`` (0600 in a 0700 ``.ssh``, the user's), never through a
        link the user may have planted: each step is opened without following links, and the
        file is replaced by rename, so its old target is never written."""
        import pwd

        entry = pwd.getpwnam(name)
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
        home = os.open(entry.pw_dir, flags)
        try:
            try:
                os.mkdir(".ssh", 0o700, dir_fd=home)
            except FileExistsError:
                pass
            ssh = os.open(".ssh", flags, dir_fd=home)
            try:
                os.fchown(ssh, entry.pw_uid, entry.pw_gid)
                os.fchmod(ssh, 0o700)
                tmp = f".authorized_keys.{os.getpid()}.tmp"
                fd = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=ssh
                )
                try:
                    os.fchown(fd, entry.pw_uid, entry.pw_gid)
                    os.write(fd, (key + "\n").encode() if key else b"")
                finally:
                    os.close(fd)
                os.replace(tmp, "authorized_keys", src_dir_fd=ssh, dst_dir_fd=ssh)
            finally:
                os.close(ssh)
        finally:
            os.close(home)

    @staticmethod
    def _sudoers(name: str, admin: bool) -> None:
        path = os.path.join(SUDOERS_DIR, f"prefect-batch-{name}")
        if not admin:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return
        tmp = path + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o440)
        with os.fdopen(fd, "w") as f:
            f.write(f"{name} ALL=(ALL) NOPASSWD:ALL\n")
        os.replace(tmp, path)


def _user_uid(name: str) -> int | None:
    import pwd

    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        return None


def _user_exists(name: str) -> bool:
    return _user_uid(name) is not None


def _kill_uid(uid: int) -> None:
    """SIGKILL every process of ``uid`` (a user being removed: its logins and what they left)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == uid:
                os.kill(int(entry), signal.SIGKILL)
        except OSError:
            pass


class _Run:
    """One task process the agent supervises (its own child, or adopted from an old agent)."""

    __slots__ = (
        "key",
        "pid",
        "dir",
        "start_time",
        "timed_out",
        "killed",
        "popen",
        "pidfd",
        "adopted",
        "proc_start",
        "owner_pid",
        "owner_start",
        "grace_until",
        "done",
        "uploads",
        "transfer_timeout",
        "linger",
    )

    def __init__(self, key: str, pid: int, rel_dir: str, start_time: float) -> None:
        self.key = key
        self.pid = pid
        self.dir = rel_dir
        self.start_time = start_time
        self.timed_out = False
        self.killed = False
        self.popen: subprocess.Popen[bytes] | None = None
        self.pidfd = -1
        self.adopted = False
        self.proc_start: str | None = None
        self.owner_pid: int | None = None
        self.owner_start: str | None = None
        self.grace_until = 0.0
        self.done = False
        self.uploads: list[dict[str, Any]] | None = None
        self.transfer_timeout = TRANSFER_TIMEOUT_SECONDS
        self.linger = False


CERT_ROLES = ("starttask", "task")
"""Who a certificate is installed for (Azure's visibility; ``remoteuser`` has no user here)."""
CERT_FILE_RE = re.compile(r"^[0-9a-f]{40}\.(pfx|cer|pem)$")


def _write_private(path: str, data: bytes) -> None:
    """Write a new file that only its owner may read (0600), following no link."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


class _Prep:
    """A validated run request on its way to being started."""

    __slots__ = (
        "key",
        "argv",
        "rel",
        "task_dir",
        "env_req",
        "wall",
        "prep_dir",
        "out",
        "err",
        "rec",
        "error",
        "ready",
        "cancelled",
        "seconds",
        "downloads",
        "uploads",
        "transfer_timeout",
        "stage_error",
        "confine",
        "certs",
        "instance",
    )

    def __init__(
        self,
        key: str,
        argv: list[str],
        rel: str,
        task_dir: str,
        env_req: dict[str, Any],
        wall: float | None,
        prep_dir: str | None,
    ) -> None:
        self.key = key
        self.argv = argv
        self.rel = rel
        self.task_dir = task_dir
        self.env_req = env_req
        self.wall = wall
        self.prep_dir = prep_dir
        self.confine = True
        self.certs: str | None = None
        self.out = -1
        self.err = -1
        self.rec = -1
        self.error: str | None = None
        self.ready = False
        self.cancelled = False
        self.seconds = 0.0
        self.downloads: list[dict[str, Any]] | None = None
        self.uploads: list[dict[str, Any]] | None = None
        self.transfer_timeout = TRANSFER_TIMEOUT_SECONDS
        self.stage_error: dict[str, Any] | None = None
        self.instance: str | None = None  # "coordination" | "primary" | None

    def close(self) -> None:
        for name in ("out", "err", "rec"):
            fd = getattr(self, name)
            if fd >= 0:
                setattr(self, name, -1)
                try:
                    os.close(fd)
                except OSError:
                    pass


class Agent:
    """The event loop: requests from ``in_fd``, events to ``out_fd``, children by pidfd/SIGCHLD.

    One thread owns everything: it reads requests in large chunks, starts processes with
    ``os.posix_spawn`` (after ``os.chdir`` into the working directory: only this thread uses the
    working directory, every other path is absolute), learns of exits through pidfds (Linux >=
    5.3, Python >= 3.9) or SIGCHLD + ``waitpid(-1)``, keeps wall-clock deadlines in a heap that
    bounds the select timeout, and writes the events of one iteration with one ``write``.

    File-system metadata work (``mkdir`` of the task directories, creating stdout.txt,
    stderr.txt and the run record, unlinking forgotten records) takes microseconds on a quiet
    disk and up to a millisecond per operation on a busy one. While a moving average says it is
    slow, runs are prepared by ``prep_threads`` worker threads so that those waits overlap; the
    loop still starts them in arrival order. On a fast file system the handoff would cost more
    than it saves, so preparation then happens inline.
    """

    def __init__(
        self,
        root: str,
        *,
        reaper: str = "auto",
        spawn: str = "auto",
        prep_threads: int = 8,
        prep_mode: str = "auto",
        in_fd: int = 0,
        out_fd: int = 1,
        disk_reserve_bytes: int = DISK_RESERVE_BYTES,
        confinement: Confinement | None = None,
        unconfined: str | None = None,
        imds_url: str | None = None,
        imds_poll_seconds: float = IMDS_POLL_SECONDS,
        imds_timeout_seconds: float = IMDS_TIMEOUT_SECONDS,
        orphan_timeout_seconds: float = 0.0,
        orphan_command: list[str] | None = None,
    ) -> None:
        self.root = os.path.realpath(os.path.abspath(root))
        self.confinement = confinement
        self.unconfined = unconfined  # why tasks run unconfined although confining was asked
        self.runs_dir = os.path.join(self.root, ".agent", "runs")
        self.trash_dir = os.path.join(self.root, ".agent", "trash")
        self._make_layout()
        # Trees a stopped agent renamed aside and had not removed yet.
        for name in os.listdir(self.trash_dir):
            shutil.rmtree(os.path.join(self.trash_dir, name), ignore_errors=True)
        self.in_fd = in_fd
        self.out_fd = out_fd
        self.pid = os.getpid()
        self.proc_start = _proc_start(self.pid)
        self.runs: dict[str, _Run] = {}
        self.by_pid: dict[int, _Run] = {}
        self.adopted: dict[str, _Run] = {}
        self.timers: list[tuple[float, int, str, _Run]] = []
        self.seq = itertools.count()
        self.out: list[str] = []
        self.out_ok = True
        self.inbuf = b""
        self.stdin_open = True
        self.draining = False
        self.stop_reason = ""
        self.which_cache: dict[tuple[str, str], str] = {}
        self.base_env = dict(os.environ)
        self.devnull = os.open(os.devnull, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        self.sel = selectors.DefaultSelector()
        self.reaper = self._pick_reaper(reaper)
        self.spawn_mode = self._pick_spawn(spawn)
        self.ops: dict[str, Callable[[dict[str, Any]], None]] = {
            "hello": self._op_hello,
            "run": self._op_run,
            "kill": self._op_kill,
            "recover": self._op_recover,
            "forget": self._op_forget,
            "delete": self._op_delete,
            "list_files": self._op_list_files,
            "read_file": self._op_read_file,
            "delete_file": self._op_delete_file,
            "ping": self._op_ping,
            "metrics": self._op_metrics,
            "certs": self._op_certs,
            "shutdown": self._op_shutdown,
            "add_user": self._op_user,
            "update_user": self._op_user,
            "delete_user": self._op_user,
            "remove_users": self._op_user,
        }
        self.users = NodeUsers(os.path.join(self.root, ".agent"))
        self._setup_signals()
        # Contact: any request from the service. Every agent on this root touches the contact
        # file, so a draining agent (its session dropped) is not orphaned while the agent of
        # the next session hears from the service.
        self.contact_path = os.path.join(self.root, ".agent", "contact")
        self.orphan_timeout = max(0.0, float(orphan_timeout_seconds))
        self.orphan_command = list(orphan_command or default_orphan_command())
        self.orphaned = False
        self.last_contact = self.contact_touched = 0.0
        self._contact()
        self.orphan_at = self.last_contact + self.orphan_timeout
        self.imds_url = imds_url or None
        self.imds_poll_seconds = max(0.05, float(imds_poll_seconds))
        self.imds_timeout_seconds = max(0.05, float(imds_timeout_seconds))
        self.pending: collections.deque[_Prep] = collections.deque()
        self.pending_keys: dict[str, _Prep] = {}
        self.prep_threads = 0 if prep_mode == "inline" else max(0, prep_threads)
        self.prep_always = prep_mode == "threads"
        self.prep_ewma = 0.0  # moving average of the seconds _prepare takes
        self.forgetting: set[str] = set()  # keys whose records are being deleted
        # Runs downloading resource files, and ended runs uploading output files: worker
        # threads report back through transfer_q and a byte on the transfer pipe.
        self.disk_reserve_bytes = disk_reserve_bytes
        self.staging: dict[str, _Prep] = {}
        self.uploading: dict[str, _Run] = {}
        # Coordination commands that ended, by key: the process group id of what they left
        # running (their background services), ended by a later kill of the same key.
        self.lingering: dict[str, int] = {}
        self.transfer_q: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()
        self.transfer_r, self.transfer_w = os.pipe()
        os.set_blocking(self.transfer_r, False)
        os.set_blocking(self.transfer_w, False)
        self.sel.register(self.transfer_r, selectors.EVENT_READ, "transfer")
        self.prep_q: queue.SimpleQueue[_Prep | list[str] | None] = queue.SimpleQueue()
        if self.prep_threads:
            self.wake_r, self.wake_w = os.pipe()
            os.set_blocking(self.wake_r, False)
            os.set_blocking(self.wake_w, False)
            self.sel.register(self.wake_r, selectors.EVENT_READ, "prepared")
            for i in range(self.prep_threads):
                threading.Thread(target=self._prep_worker, name=f"prep-{i}", daemon=True).start()

    # ------------------------------------------------------------------ setup

    def _make_layout(self) -> None:
        for sub in (
            "shared",
            "startup",
            "fsmounts",
            os.path.join(".agent", "runs"),
            os.path.join(".agent", "trash"),
        ):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)

    def _pick_reaper(self, wanted: str) -> str:
        if wanted in ("auto", "pidfd") and hasattr(os, "pidfd_open"):
            try:
                os.close(os.pidfd_open(os.getpid()))
                return "pidfd"
            except OSError:
                pass
        if wanted == "pidfd":
            self._diag("pidfd_open is not available here; using SIGCHLD")
        return "sigchld"

    def _pick_spawn(self, wanted: str) -> str:
        if wanted in ("auto", "posix_spawn") and hasattr(os, "posix_spawn"):
            return "posix_spawn"
        return "popen"

    def _setup_signals(self) -> None:
        # Signal numbers arrive as bytes on a self-pipe the selector watches (set_wakeup_fd), so
        # a signal wakes the loop instead of being noticed at the next timeout.
        self.sig_r, self.sig_w = os.pipe()
        os.set_blocking(self.sig_r, False)
        os.set_blocking(self.sig_w, False)
        signal.set_wakeup_fd(self.sig_w, warn_on_full_buffer=False)
        self.sel.register(self.sig_r, selectors.EVENT_READ, "signal")

        def _noop(signum: int, frame: Any) -> None:
            return None

        if hasattr(signal, "SIGHUP"):
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, _noop)
        signal.signal(signal.SIGINT, _noop)
        if self.reaper == "sigchld":
            signal.signal(signal.SIGCHLD, _noop)

    def _register_stdin(self) -> None:
        try:
            os.set_inheritable(self.in_fd, False)
        except OSError:
            pass
        try:
            self.sel.register(self.in_fd, selectors.EVENT_READ, "stdin")
        except (PermissionError, ValueError, OSError):
            # A regular file or /dev/null cannot be polled: it is all there already.
            data = b""
            while True:
                chunk = os.read(self.in_fd, 1 << 20)
                if not chunk:
                    break
                data += chunk
            self._feed(data)
            self._on_eof()

    # ------------------------------------------------------------------ loop

    def serve(self) -> int:
        """Run until drained; returns the process exit status."""
        self._register_stdin()
        if self.imds_url:
            threading.Thread(target=self._imds_loop, name="imds", daemon=True).start()
        self._flush()
        while not (
            self.draining
            and not self.runs
            and not self.pending
            and not self.staging
            and not self.uploading
        ):
            timeout = None
            if self.timers:
                timeout = max(0.0, self.timers[0][0] - time.monotonic())
            if self.orphan_timeout and not self.orphaned:
                left = max(0.0, self.orphan_at - time.monotonic())
                timeout = left if timeout is None else min(timeout, left)
            events = self.sel.select(timeout)
            for key, _ in events:
                data = key.data
                if data == "stdin":
                    self._on_stdin()
                elif data == "signal":
                    self._on_signal()
                elif data == "prepared":
                    self._on_prepared()
                elif data == "transfer":
                    self._on_transfer()
                else:
                    self._on_pidfd(data)
            if self.timers:
                self._run_timers()
            if self.orphan_timeout and not self.orphaned:
                self._check_orphan()
            self._flush()
        self._emit({"ev": "bye", "reason": self.stop_reason or "drain"})
        self._flush()
        for _ in range(self.prep_threads):
            self.prep_q.put(None)
        if self.orphaned:
            self._run_orphan_command()
        return 0

    def _on_stdin(self) -> None:
        try:
            data = os.read(self.in_fd, 1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._on_eof()
            return
        self._contact()
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        if self.inbuf:
            data = self.inbuf + data
        lines = data.split(b"\n")
        self.inbuf = lines.pop()
        for line in lines:
            if line.strip():
                self._handle_line(line)

    def _on_eof(self) -> None:
        if self.stdin_open:
            self.stdin_open = False
            try:
                self.sel.unregister(self.in_fd)
            except (KeyError, ValueError):
                pass
        if self.inbuf.strip():
            line, self.inbuf = self.inbuf, b""
            self._handle_line(line)
        self._begin_drain("eof")

    def _on_signal(self) -> None:
        try:
            data = os.read(self.sig_r, 4096)
        except OSError:
            return
        if self.reaper == "sigchld" and signal.SIGCHLD in data:
            self._reap_all()
        if signal.SIGTERM in data or signal.SIGINT in data:
            self._begin_drain("signal")

    def _handle_line(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError as exc:
            self._emit(
                {
                    "ev": "error",
                    "op": None,
                    "code": "OperationInvalid",
                    "message": f"invalid JSON: {exc}",
                }
            )
            return
        if not isinstance(msg, dict):
            self._emit(
                {
                    "ev": "error",
                    "op": None,
                    "code": "OperationInvalid",
                    "message": "a request must be a JSON object",
                }
            )
            return
        op = msg.get("op")
        handler = self.ops.get(op) if isinstance(op, str) else None
        if handler is None:
            self._error(msg, "OperationInvalid", f"unknown op {op!r}")
            return
        try:
            handler(msg)
        except _Invalid as exc:
            self._error(msg, exc.code, exc.message)
        except Exception as exc:  # never let one request take the agent down
            self._diag(f"op {op!r} failed:\n{traceback.format_exc()}")
            self._error(msg, "AgentError", f"{type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ output

    def _emit(self, event: dict[str, Any]) -> None:
        self.out.append(json.dumps(event, separators=(",", ":")))

    def _error(self, msg: dict[str, Any], code: str, message: str) -> None:
        event: dict[str, Any] = {
            "ev": "error",
            "op": msg.get("op"),
            "code": code,
            "message": message,
        }
        for field in ("req", "key", "dir", "ev_id"):
            if field in msg:
                event[field] = msg[field]
        self._emit(event)

    def _flush(self) -> None:
        if not self.out:
            return
        data = ("\n".join(self.out) + "\n").encode()
        self.out = []
        if not self.out_ok:
            return
        view = memoryview(data)
        try:
            while view:
                try:
                    n = os.write(self.out_fd, view)
                except BlockingIOError:  # someone made our stdout non-blocking: wait for room
                    select.select([], [self.out_fd], [], 0.05)
                    continue
                view = view[n:]
        except OSError as exc:
            # The reader is gone (session dropped): keep supervising, results are on disk.
            self.out_ok = False
            self._diag(f"stdout closed ({exc}); events are dropped from now on")

    def _diag(self, text: str) -> None:
        try:
            sys.stderr.write(f"prefect-batch-agent[{os.getpid()}]: {text}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass

    # ------------------------------------------------------------------ paths

    def _rel(self, value: Any, what: str, allow_root: bool = False) -> str:
        """Validate a root-relative path lexically; returns it (``""`` for the root)."""
        if not isinstance(value, str):
            raise _Invalid("OperationInvalid", f"{what} must be a string")
        text: str = value
        if text in ("", ".") and allow_root:
            return ""
        if allow_root and text.endswith("/"):
            text = text.rstrip("/")
        if not text or text.startswith("/") or "\0" in text:
            raise _Invalid("OperationInvalid", f"{what} must be a relative path: {text!r}")
        for part in text.split("/"):
            if part in ("", ".", ".."):
                raise _Invalid(
                    "OperationInvalid",
                    f"{what} may not contain empty, '.' or '..' parts: {text!r}",
                )
        return text

    def _inside(self, real: str) -> bool:
        return _inside_dir(real, self.root)

    def _resolve(self, rel: str, what: str) -> str:
        """Absolute path of ``rel`` with symlinks resolved; it must stay inside the root.

        The root is resolved once at start, so only the components below it are checked; when
        none is a symlink (the usual case) that costs one ``lstat`` per existing component.
        """
        if not rel:
            return self.root
        path = self.root
        for part in rel.split("/"):
            path = path + "/" + part
            try:
                mode = os.lstat(path).st_mode
            except OSError:
                break  # the rest does not exist yet: nothing below can be a symlink
            if stat.S_ISLNK(mode):
                real = os.path.realpath(os.path.join(self.root, rel))
                if not self._inside(real):
                    raise _Invalid("OperationInvalid", f"{what} escapes the node root: {rel!r}")
                return real
        return self.root + "/" + rel

    # ------------------------------------------------------------------ records

    def _record_path(self, key: str) -> str:
        return os.path.join(self.runs_dir, key + ".json")

    def _write_record(self, key: str, record: dict[str, Any], new: bool = True) -> None:
        """Start a run record (``new``) or append a line of fields to it.

        A record is a JSON-lines file whose lines are merged in order: the start line when the
        process is spawned, later the result line. Each line is one ``write`` of a small buffer
        with O_APPEND, so a reader sees whole lines; this costs one file creation per task
        instead of a create + rename per update (metadata operations dominate on busy disks).
        """
        path = self._record_path(key)
        flags = _OPEN_APPEND | (os.O_CREAT | os.O_TRUNC if new else 0)
        try:
            fd = os.open(path, flags, 0o644)
            try:
                os.write(fd, json.dumps(record, separators=(",", ":")).encode() + b"\n")
            finally:
                os.close(fd)
        except OSError as exc:
            self._diag(f"cannot write run record {path}: {exc}")

    def _read_record(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self._record_path(key), "rb") as f:
                data = f.read()
        except OSError:
            return None
        rec: dict[str, Any] = {}
        for line in data.split(b"\n"):
            try:
                fields = json.loads(line)
            except ValueError:
                continue  # an empty or torn line: the rest of the record still counts
            if isinstance(fields, dict):
                rec.update(fields)
        return rec or None

    @staticmethod
    def _exited_event(rec: dict[str, Any]) -> dict[str, Any]:
        return {
            "ev": "exited",
            "key": rec.get("key"),
            "exit_code": rec.get("exit_code"),
            "start_time": rec.get("start_time"),
            "end_time": rec.get("end_time"),
            "timed_out": bool(rec.get("timed_out")),
            "killed": bool(rec.get("killed")),
            "error": rec.get("error"),
            "upload_error": rec.get("upload_error"),
        }

    def _fail_run(
        self,
        key: Any,
        code: str,
        message: str,
        rel_dir: Any = None,
        killed: bool = False,
        error: dict[str, Any] | None = None,
    ) -> None:
        """Answer a run that never started: an ``exited`` event (recorded if the key is valid).

        ``killed``: it was killed (kill op, shutdown kill) before it could start; no error.
        ``error``: the whole error object, when it says more than code and message (a failed
        download's category, values and phase).
        """
        now = time.time()
        rec: dict[str, Any] = {
            "key": key,
            "pid": None,
            "dir": rel_dir,
            "start_time": now,
            "end_time": now,
            "exit_code": None,
            "timed_out": False,
            "killed": killed,
            "error": None if killed else (error or {"code": code, "message": message}),
        }
        if isinstance(key, str) and KEY_RE.match(key):
            self._write_record(key, rec)
        self._emit(self._exited_event(rec))

    # ------------------------------------------------------------------ ops

    def _op_hello(self, msg: dict[str, Any]) -> None:
        self._make_layout()
        self._expire_users()
        self._emit(
            {
                "ev": "hello",
                "v": PROTOCOL_VERSION,
                "agent_version": AGENT_VERSION,
                "pid": self.pid,
                "uid": os.geteuid(),
                "hostname": os.uname().nodename,
                "cpu_count": _cpu_count(),
                "memory_bytes": _sysconf_bytes("SC_PHYS_PAGES") or _meminfo("MemTotal") or 0,
                "root": self.root,
                "time": time.time(),
                "reaper": self.reaper,
                "spawn": self.spawn_mode,
                "confined": self.confinement is not None,
                **({"unconfined": self.unconfined} if self.unconfined else {}),
            }
        )

    def _op_run(self, msg: dict[str, Any]) -> None:
        key = msg.get("key")
        if not isinstance(key, str) or not KEY_RE.match(key):
            self._fail_run(key, "OperationInvalid", "key must match [A-Za-z0-9_.-]{1,128}")
            return
        if (
            key in self.runs
            or key in self.adopted
            or key in self.pending_keys
            or key in self.uploading
        ):
            self._error(msg, "TaskKeyInUse", f"a task with key {key!r} is running")
            return
        if self.draining:
            self._fail_run(key, "AgentDraining", "the agent is shutting down")
            return
        try:
            argv = msg.get("argv")
            if (
                not isinstance(argv, list)
                or not argv
                or not all(isinstance(a, str) for a in argv)
                or not argv[0]
            ):
                raise _Invalid("OperationInvalid", "argv must be a non-empty list of strings")
            rel = self._rel(msg.get("dir"), "dir")
            self._own_state(rel, "dir")
            task_dir = self._resolve(rel, "dir")
            prep_rel = msg.get("job_prep_dir")
            prep_dir = None
            if prep_rel is not None:
                prep_rel = self._rel(prep_rel, "job_prep_dir")
                prep_dir = self._resolve(prep_rel, "job_prep_dir")
            env_req = msg.get("env") or {}
            if not isinstance(env_req, dict):
                raise _Invalid("OperationInvalid", "env must be an object")
            wall = msg.get("wall_clock_seconds")
            if wall is not None:
                if isinstance(wall, bool) or not isinstance(wall, (int, float)) or wall <= 0:
                    raise _Invalid("OperationInvalid", "wall_clock_seconds must be > 0 or null")
            downloads, uploads, transfer_timeout = self._transfers_of(msg)
            certs = msg.get("certs")
            if certs is not None and certs not in CERT_ROLES:
                raise _Invalid("OperationInvalid", f"certs must be one of {CERT_ROLES} or null")
        except _Invalid as exc:
            self._fail_run(key, exc.code, exc.message, msg.get("dir"))
            return
        self.forgetting.discard(key)
        stage_error = msg.get("stage_error")
        if isinstance(stage_error, dict):
            # The service could not resolve the task's files (e.g. a bucket that does not
            # exist): the task ends as a pre-processing error, recorded like any other end.
            error = {k: stage_error.get(k) for k in ("code", "message", "category", "values")}
            error["phase"] = stage_error.get("phase") or "download"
            self._fail_run(key, str(error["code"]), str(error["message"]), rel, error=error)
            return
        p = _Prep(key, argv, rel, task_dir, env_req, wall, prep_dir)
        p.confine = msg.get("confine") is not False  # false: admin elevation, unconfined
        p.certs = certs
        p.uploads = uploads
        p.transfer_timeout = transfer_timeout
        instance = msg.get("instance")
        if instance is not None and instance not in ("coordination", "primary"):
            self._fail_run(key, "OperationInvalid", "instance must be coordination or primary", rel)
            return
        p.instance = instance
        if downloads:
            p.downloads = downloads
            self.staging[key] = p
            self.pending_keys[key] = p
            threading.Thread(
                target=self._stage, args=(p,), name=f"stage-{key}", daemon=True
            ).start()
            return
        # Hand the file-system work to the prep threads when it is slow (a busy disk), or when
        # earlier runs are still there (to keep the order); on a fast file system the handoff
        # costs more than it saves.
        if self.prep_threads and (
            self.pending or self.prep_ewma > PREP_INLINE_SECONDS or self.prep_always
        ):
            self.pending.append(p)
            self.pending_keys[key] = p
            self.prep_q.put(p)
        else:
            self._prepare(p)
            self._launch(p)

    def _transfers_of(
        self, msg: dict[str, Any]
    ) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None, float]:
        """Validate a run request's ``downloads``, ``uploads`` and ``transfer_timeout_seconds``."""
        downloads = msg.get("downloads")
        uploads = msg.get("uploads")
        timeout = msg.get("transfer_timeout_seconds") or TRANSFER_TIMEOUT_SECONDS
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise _Invalid("OperationInvalid", "transfer_timeout_seconds must be > 0")
        for name, items, fields in (
            ("downloads", downloads, ("url", "path")),
            ("uploads", uploads, ("pattern", "target")),
        ):
            if items is None:
                continue
            if not isinstance(items, list) or not all(
                isinstance(i, dict) and all(i.get(f) for f in fields) for i in items
            ):
                raise _Invalid("OperationInvalid", f"{name} must be a list of {'/'.join(fields)}")
        for d in downloads or ():
            mode = d.get("mode")
            if mode is not None and (
                isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777
            ):
                raise _Invalid("OperationInvalid", f"mode of {d['path']!r} must be 0..0o777")
        for u in uploads or ():
            pattern = u["pattern"]
            parts = pattern.split("/")
            # A pattern may climb from the working directory to the task directory, no further.
            if (
                pattern.startswith("/")
                or "\0" in pattern
                or ".." in parts[1:]
                or (parts[0] == ".." and len(parts) < 2)
            ):
                raise _Invalid("OperationInvalid", f"upload pattern leaves the task: {pattern!r}")
        return downloads, uploads, float(timeout)

    def _stage(self, p: _Prep) -> None:
        """Worker thread: make the task's directories, then download its resource files."""
        self._prepare(p)
        if p.error is None and not p.cancelled:
            try:
                _download_all(
                    p.downloads or [],
                    # commonResourceFiles go to the task directory, one above the working one
                    p.task_dir if p.instance == "coordination" else p.task_dir + "/wd",
                    p.transfer_timeout,
                    self.disk_reserve_bytes,
                )
            except _TransferError as exc:
                p.stage_error = exc.to_error("download")
            except Exception as exc:  # noqa: BLE001 - any failure ends the task, not the agent
                p.stage_error = _TransferError(
                    "BlobDownloadMiscError", f"download failed: {exc}", "servererror"
                ).to_error("download")
        self._transfer_done(("staged", p))

    def _upload(self, run: _Run, result: dict[str, Any]) -> None:
        """Worker thread: upload the ended task's output files."""
        task_dir = self._resolve(run.dir, "dir")
        succeeded = result.get("exit_code") == 0 and not result.get("timed_out")
        try:
            error = _upload_all(run.uploads or [], task_dir, succeeded, run.transfer_timeout)
        except Exception as exc:  # noqa: BLE001
            error = _TransferError(
                "FileUploadFailed", f"upload failed: {exc}", "servererror"
            ).to_error("upload")
        self._transfer_done(("uploaded", run, result, error))

    def _transfer_done(self, item: tuple[Any, ...]) -> None:
        self.transfer_q.put(item)
        try:
            os.write(self.transfer_w, b"\0")
        except OSError:  # the pipe is full: the loop is awake already
            pass

    def _on_transfer(self) -> None:
        try:
            while os.read(self.transfer_r, 4096):
                pass
        except OSError:
            pass
        while True:
            try:
                item = self.transfer_q.get_nowait()
            except queue.Empty:
                return
            if item[0] == "notice":
                self._emit(item[1])
            elif item[0] == "staged":
                p = item[1]
                self.staging.pop(p.key, None)
                self.pending_keys.pop(p.key, None)
                if p.stage_error is not None and not p.cancelled:
                    p.close()
                    error = p.stage_error
                    self._fail_run(p.key, error["code"], error["message"], p.rel, error=error)
                else:
                    self._launch(p)
            else:
                _, run, result, error = item
                self.uploading.pop(run.key, None)
                self._end_run(run, result, error)

    def _task_env(
        self, env_req: dict[str, Any], task_dir: str, prep_dir: str | None
    ) -> dict[str, str]:
        env = self.base_env.copy()
        for name, value in env_req.items():
            env[str(name)] = value if isinstance(value, str) else str(value)
        root = self.root
        wd = task_dir + "/wd"
        env["AZ_BATCH_NODE_ROOT_DIR"] = root
        env["AZ_BATCH_NODE_SHARED_DIR"] = root + "/shared"
        env["AZ_BATCH_NODE_STARTUP_DIR"] = root + "/startup"
        env["AZ_BATCH_NODE_MOUNTS_DIR"] = root + "/fsmounts"
        env["AZ_BATCH_TASK_DIR"] = task_dir
        env["AZ_BATCH_TASK_WORKING_DIR"] = wd
        env["AZ_BATCH_NODE_TASK_DIR"] = task_dir
        env["AZ_BATCH_NODE_TASK_WORKING_DIR"] = wd
        if prep_dir is not None:
            env["AZ_BATCH_JOB_PREP_DIR"] = prep_dir
            env["AZ_BATCH_JOB_PREP_WORKING_DIR"] = prep_dir + "/wd"
            env["AZ_BATCH_NODE_JOB_PREP_DIR"] = prep_dir
            env["AZ_BATCH_NODE_JOB_PREP_WORKING_DIR"] = prep_dir + "/wd"
        return env

    def _which(self, name: str, path_value: str, wd: str) -> str:
        """Find ``name`` in ``path_value`` like execvp; absolute hits are cached per PATH."""
        cache_key = (path_value, name)
        hit = self.which_cache.get(cache_key)
        if hit is not None:
            return hit
        denied = None
        cacheable = True
        for entry in path_value.split(os.pathsep):
            if not entry.startswith("/"):
                cacheable = False  # relative PATH entries depend on the working directory
                entry = os.path.join(wd, entry)
            candidate = os.path.join(entry, name)
            try:
                st = os.stat(candidate)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and os.access(candidate, os.X_OK):
                if cacheable:
                    self.which_cache[cache_key] = candidate
                return candidate
            denied = candidate
        if denied is not None:
            raise _Invalid(
                "CommandProgramNotExecutable", f"{name}: Permission denied (found {denied})"
            )
        raise _Invalid(
            "CommandProgramNotFound",
            f"{name}: No such file or directory (searched PATH={path_value})",
        )

    def _prepare(self, p: _Prep) -> None:
        """Make the task's directories and open its output files and run record.

        Thread-safe (it only touches ``p``): with ``--prep-threads`` it runs on worker threads,
        so that slow file-system metadata operations of several tasks overlap instead of
        stalling the event loop one after the other.
        """
        wd = p.task_dir + "/wd"
        began = time.perf_counter()
        try:
            try:  # the usual case: a new task directory in an existing job directory
                os.mkdir(p.task_dir)
                os.mkdir(wd)
            except OSError:
                os.makedirs(wd, exist_ok=True)
            if p.certs is not None:
                self._copy_certs(p.certs, p.task_dir)
            # A coordination command shares the task directory with the application command
            # that follows it on the primary: it keeps its output apart.
            prefix = "coordination-" if p.instance == "coordination" else ""
            p.out = os.open(f"{p.task_dir}/{prefix}stdout.txt", _OPEN_W, 0o644)
            p.err = os.open(f"{p.task_dir}/{prefix}stderr.txt", _OPEN_W, 0o644)
            p.rec = os.open(self._record_path(p.key), _OPEN_APPEND | os.O_CREAT | os.O_TRUNC, 0o644)
        except (OSError, ValueError) as exc:
            p.error = f"cannot prepare {p.rel}: {exc}"
            p.close()
        p.seconds = time.perf_counter() - began

    def _prep_worker(self) -> None:
        while True:
            p = self.prep_q.get()
            if p is None:
                return
            if isinstance(p, list):
                self._unlink_records(p)
                continue
            self._prepare(p)
            p.ready = True
            try:
                os.write(self.wake_w, b"\0")
            except OSError:  # the pipe is full: the loop is awake already
                pass

    def _on_prepared(self) -> None:
        try:
            while os.read(self.wake_r, 4096):
                pass
        except OSError:
            pass
        while self.pending and self.pending[0].ready:
            p = self.pending.popleft()
            del self.pending_keys[p.key]
            self._launch(p)

    def _launch(self, p: _Prep, retry: bool = True) -> None:
        """Start a prepared task (on the loop's thread: it changes the working directory)."""
        key, argv, rel = p.key, p.argv, p.rel
        self.prep_ewma += 0.1 * (p.seconds - self.prep_ewma)
        if p.error is not None:
            self._fail_run(key, "TaskStartFailed", p.error, rel)
            return
        if p.cancelled:
            p.close()
            self._fail_run(key, "", "", rel, killed=True)
            return
        wd = p.task_dir + "/wd"
        prog = argv[0]
        popen = None
        search = ""
        cached = False
        retry_spawn = False
        ruleset = -1
        try:
            env = self._task_env(p.env_req, p.task_dir, p.prep_dir)
            if p.certs is not None:
                env["AZ_BATCH_CERTIFICATES_DIR"] = p.task_dir + "/certs"
            if p.instance is not None:
                env["AZ_BATCH_TASK_SHARED_DIR"] = p.task_dir
            search = env.get("PATH") or os.defpath
            cached = "/" not in prog and (search, prog) in self.which_cache
            path = self._which(prog, search, wd) if "/" not in prog else prog
            preexec = None
            if self.confinement is not None and p.confine:
                ruleset, preexec = self._sandbox(p, env)
            start = time.time()
            if self.spawn_mode == "posix_spawn":
                try:
                    if preexec is None:
                        pid = self._posix_spawn(path, argv, env, wd, p.out, p.err)
                    else:
                        pid = self._confined_spawn(preexec, path, argv, env, wd, p.out, p.err)
                        preexec = None
                except NotImplementedError:  # no POSIX_SPAWN_SETSID here
                    self.spawn_mode = "popen"
            if preexec is not None or self.spawn_mode == "popen":
                # Without posix_spawn a confined task goes through Popen, with the restrictions
                # applied in the child (preexec_fn=None is Popen's own default).
                popen = subprocess.Popen(
                    argv,
                    executable=path,
                    stdin=self.devnull,
                    stdout=p.out,
                    stderr=p.err,
                    cwd=wd,
                    env=env,
                    close_fds=True,
                    start_new_session=True,
                    restore_signals=True,
                    preexec_fn=preexec,
                )
                pid = popen.pid
        except _Invalid as exc:
            p.close()
            self._fail_run(key, exc.code, exc.message, rel)
            return
        except OSError as exc:
            p.close()
            code = "TaskStartFailed"
            if exc.errno in _NOT_FOUND:
                code = "CommandProgramNotFound"
                if cached:  # the program moved since it was looked up: look it up afresh
                    self.which_cache.pop((search, prog), None)
                    retry_spawn = retry
            elif exc.errno in _NOT_EXECUTABLE:
                code = "CommandProgramNotExecutable"
            if retry_spawn:
                self._prepare(p)
                self._launch(p, retry=False)
            else:
                self._fail_run(key, code, f"{prog}: {exc.strerror or exc}", rel)
            return
        except (ValueError, TypeError) as exc:  # NUL bytes, '=' in an env name, ...
            p.close()
            self._fail_run(key, "OperationInvalid", str(exc), rel)
            return
        except subprocess.SubprocessError as exc:  # the confinement failed in the child
            p.close()
            self._fail_run(key, "TaskStartFailed", f"cannot confine the task: {exc}", rel)
            return
        finally:
            if ruleset >= 0:
                os.close(ruleset)
        run = _Run(key, pid, rel, start)
        run.linger = p.instance == "coordination"
        run.popen = popen
        run.uploads = p.uploads
        run.transfer_timeout = p.transfer_timeout
        self.runs[key] = run
        self.by_pid[pid] = run
        if self.reaper == "pidfd":
            try:
                run.pidfd = os.pidfd_open(pid)
                self.sel.register(run.pidfd, selectors.EVENT_READ, run)
            except OSError:
                self._diag(f"pidfd_open({pid}) failed; switching to SIGCHLD")
                self._switch_to_sigchld()
        now = time.monotonic()
        deadline = None
        if p.wall is not None:
            deadline = start + p.wall
            self._push_timer(now + p.wall, "wall", run)
        # Reading /proc/<pid>/stat right after the spawn waits for the exec to settle and costs
        # as much as a third of a spawn, so the exact start time is recorded only for tasks
        # that live long enough to matter; before that, recovery compares wall-clock starts.
        self._push_timer(now + STAMP_AFTER_SECONDS, "stamp", run)
        line = {
            "key": key,
            "pid": pid,
            "dir": rel,
            "start_time": start,
            "deadline": deadline,
            "agent_pid": self.pid,
            "agent_start": self.proc_start,
        }
        try:
            os.write(p.rec, json.dumps(line, separators=(",", ":")).encode() + b"\n")
        except OSError as exc:
            self._diag(f"cannot write run record of {key}: {exc}")
        p.close()
        self._emit({"ev": "started", "key": key, "pid": pid, "time": start})

    def _sandbox(self, p: _Prep, env: dict[str, str]) -> tuple[int, Callable[[], None]]:
        """The task's ruleset and the child's preexec step; gives the task its own TMPDIR."""
        assert self.confinement is not None
        tmp = p.task_dir + "/tmp"
        os.makedirs(tmp, exist_ok=True)
        if "TMPDIR" not in p.env_req:
            env["TMPDIR"] = tmp
        dirs = [p.task_dir, self.root + "/shared", self.root + "/startup"]
        if p.prep_dir is not None:
            dirs.append(p.prep_dir)
        ruleset = self.confinement.build_for(dirs, env)
        return ruleset, self.confinement.preexec(ruleset)

    def _confined_spawn(
        self,
        restrict: Callable[[], None],
        path: str,
        argv: list[str],
        env: dict[str, str],
        wd: str,
        out: int,
        err: int,
    ) -> int:
        """``posix_spawn`` from a thread of its own that first confines itself.

        The capability bounding set, ``no_new_privs`` and a Landlock domain are attributes of
        a thread, and a process inherits those of the thread that created it: a fresh thread
        takes the task's restrictions, spawns it and ends, and the agent's other threads keep
        theirs. (``preexec_fn`` would do the same in a forked child, at several times the
        cost of a spawn.) The loop waits for the thread, so the working directory it sets is
        used by nobody else meanwhile.
        """
        done: dict[str, Any] = {}

        def spawn() -> None:
            try:
                restrict()
                done["pid"] = self._posix_spawn(path, argv, env, wd, out, err)
            except BaseException as exc:  # noqa: BLE001 - handed to the loop's thread
                done["error"] = exc

        thread = threading.Thread(target=spawn, name="prefect-batch-confined-spawn")
        thread.start()
        thread.join()
        if "error" in done:
            raise done["error"]
        return int(done["pid"])

    def _posix_spawn(
        self, path: str, argv: list[str], env: dict[str, str], wd: str, out: int, err: int
    ) -> int:
        # posix_spawn has no cwd argument: change ours. Safe because the loop is the only
        # thread, and all of the agent's own paths are absolute.
        os.chdir(wd)
        return os.posix_spawn(
            path,
            argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, self.devnull, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, err, 2),
            ],
            setsid=True,
            setsigdef=_SIGDEF,
        )

    def _switch_to_sigchld(self) -> None:
        self.reaper = "sigchld"
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self._reap_all()

    def _op_kill(self, msg: dict[str, Any]) -> None:
        key = msg.get("key")
        if not isinstance(key, str):
            return
        pending = self.pending_keys.get(key)
        if pending is not None:
            pending.cancelled = True
            return
        run = self.runs.get(key) or self.adopted.get(key)
        if run is None or run.done:
            self._end_lingering(key)
            return
        run.linger = False  # killed while running: the group goes with it
        grace = msg.get("grace_seconds")
        if (
            not run.killed
            and isinstance(grace, (int, float))
            and not isinstance(grace, bool)
            and grace > 0
        ):
            run.killed = True
            self._kill_group(run, signal.SIGTERM)
            grace = min(float(grace), MAX_KILL_GRACE_SECONDS)
            self._push_timer(time.monotonic() + grace, "kill", run)
            return
        run.killed = True
        self._kill_group(run)

    def _end_lingering(self, key: str) -> None:
        """SIGKILL what an ended coordination command left running in its process group.

        Linux does not hand out a pid that is still some group's id, so while the background
        services are alive the group id is theirs. Once they are gone the id may be reused; a
        group led by one of this agent's own runs is never signalled here.
        """
        pgid = self.lingering.pop(key, None)
        if pgid is None or pgid in self.by_pid:
            return
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass

    def _kill_group(self, run: _Run, sig: int = signal.SIGKILL) -> None:
        if run.adopted and not _alive(run.pid, run.proc_start, run.start_time):
            return  # not ours: never signal a pid that may have been reused
        try:
            os.killpg(run.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                os.kill(run.pid, sig)
            except OSError:
                pass

    def _op_shutdown(self, msg: dict[str, Any]) -> None:
        mode = msg.get("mode", "drain")
        if mode not in ("drain", "kill"):
            raise _Invalid("OperationInvalid", "mode must be 'drain' or 'kill'")
        if mode == "kill":
            self.stop_reason = "kill"
            self._kill_all()
        self._begin_drain(mode)

    def _kill_all(self) -> None:
        for p in self.pending:
            p.cancelled = True
        for run in list(self.runs.values()) + list(self.adopted.values()):
            run.killed = True
            self._kill_group(run)
        for key in list(self.lingering):
            self._end_lingering(key)

    def _begin_drain(self, reason: str) -> None:
        self.draining = True
        if not self.stop_reason:
            self.stop_reason = reason

    # ------------------------------------------------------------------ orphan timeout

    def _contact(self) -> None:
        """The service was heard from: note it here and on the root (at most once a second)."""
        now = time.monotonic()
        self.last_contact = now
        if now - self.contact_touched < 1.0 and self.contact_touched:
            return
        self.contact_touched = now
        try:
            fd = os.open(self.contact_path, os.O_WRONLY | os.O_CREAT | _O_CLOEXEC, 0o600)
            try:
                os.utime(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            self._diag(f"cannot touch {self.contact_path}: {exc}")

    def _check_orphan(self) -> None:
        now = time.monotonic()
        if now < self.orphan_at:
            return
        idle = now - self.last_contact
        try:  # another agent on this root may have heard from the service since
            idle = min(idle, max(0.0, time.time() - os.stat(self.contact_path).st_mtime))
        except OSError:
            pass
        if idle < self.orphan_timeout:
            self.orphan_at = now + self.orphan_timeout - idle
            return
        self._diag(
            f"no contact from the service for {idle:.0f} s: killing every task, then running "
            f"{self.orphan_command!r}"
        )
        self.orphaned = True
        self.stop_reason = "orphan"
        self._kill_all()
        self._begin_drain("orphan")

    def _run_orphan_command(self) -> None:
        try:
            proc = subprocess.Popen(
                self.orphan_command,
                stdin=self.devnull,
                stdout=2,  # never the protocol's stdout
                stderr=2,
                close_fds=True,
                start_new_session=True,
            )
            code = proc.wait(timeout=ORPHAN_COMMAND_TIMEOUT_SECONDS)
            self._diag(f"{self.orphan_command!r} exited with status {code}")
        except (OSError, subprocess.SubprocessError) as exc:
            self._diag(f"{self.orphan_command!r} failed: {exc}")

    # ------------------------------------------------------------------ instance metadata

    def _imds_loop(self) -> None:
        """Poll the metadata service (on its own thread); hand notices to the loop."""
        assert self.imds_url is not None
        poller = ImdsPoller(self.imds_url, self.imds_timeout_seconds)
        last_error = ""
        while True:
            try:
                for event in poller.poll():
                    self._transfer_done(("notice", event))
                last_error = ""
            except Exception as exc:  # noqa: BLE001 - the next poll tries again
                if str(exc) != last_error:  # say it once, not every few seconds
                    last_error = str(exc)
                    self._diag(f"instance metadata at {self.imds_url}: {exc}")
            time.sleep(self.imds_poll_seconds)

    # ------------------------------------------------------------------ exits

    def _on_pidfd(self, run: _Run) -> None:
        if run.adopted:
            self._close_pidfd(run)
            self._adopted_gone(run)
            return
        try:
            pid, status = os.waitpid(run.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = run.pid, -1
        if pid:
            self._finish(run, status)

    def _reap_all(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            run = self.by_pid.get(pid)
            if run is not None:
                self._finish(run, status)

    def _close_pidfd(self, run: _Run) -> None:
        if run.pidfd >= 0:
            try:
                self.sel.unregister(run.pidfd)
            except (KeyError, ValueError):
                pass
            os.close(run.pidfd)
            run.pidfd = -1

    def _finish(self, run: _Run, status: int) -> None:
        end = time.time()
        run.done = True
        self._close_pidfd(run)
        self.by_pid.pop(run.pid, None)
        if self.runs.get(run.key) is run:
            del self.runs[run.key]
        code = _exit_code(status) if status >= 0 else None
        if run.linger and not run.killed and not run.timed_out:
            self.lingering[run.key] = run.pid
        if run.popen is not None:
            run.popen.returncode = code if code is not None else -1  # keep Popen from reaping
        result: dict[str, Any] = {
            "end_time": end,
            "exit_code": code,
            "timed_out": run.timed_out,
            "killed": run.killed,
            "error": None,
        }
        full = self._disk_full(run)
        if full is not None:
            result["error"] = full
        if run.uploads and not run.killed and full is None:
            # The result is recorded and reported once the output files are uploaded; the
            # "uploading" line tells a recovering agent to wait for it.
            self._write_record(run.key, {"uploading": True}, new=False)
            self.uploading[run.key] = run
            threading.Thread(
                target=self._upload, args=(run, result), name=f"upload-{run.key}", daemon=True
            ).start()
            return
        self._end_run(run, result, None)

    def _disk_full(self, run: _Run) -> dict[str, Any] | None:
        """After a run: when the node's free space is below ``disk_reserve_bytes`` and the run's
        own directory holds what is missing (its size plus the free space reaches the
        reserve), its output is what filled the disk. Its working directory is emptied
        (stdout.txt and stderr.txt are kept, cut to their first :data:`DISK_FULL_KEEP_BYTES`)
        so the node can run the next tasks, and the run fails with ``DiskFull``; None when
        there is room or the space went elsewhere."""
        try:
            free = _free_bytes(self.root)
        except OSError:
            return None
        if free >= self.disk_reserve_bytes:
            return None
        try:
            task_dir = self._resolve(run.dir, "dir")
        except _Invalid:
            return None
        if free + _tree_bytes(task_dir) < self.disk_reserve_bytes:
            # What this run holds would not give the reserve back: the space went elsewhere
            # (another task still writing, files outside the tasks). Its result stands.
            return None
        _empty_dir(task_dir + "/wd")
        for name in ("stdout.txt", "stderr.txt"):
            try:
                fd = os.open(f"{task_dir}/{name}", os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
            except OSError:
                continue
            try:
                if os.fstat(fd).st_size > DISK_FULL_KEEP_BYTES:
                    os.ftruncate(fd, DISK_FULL_KEEP_BYTES)
            except OSError:
                pass
            finally:
                os.close(fd)
        try:
            after = _free_bytes(self.root)
        except OSError:
            after = free
        self._diag(f"{run.key}: the node's disk is full ({free} bytes free); {after} after cleanup")
        return {
            "code": "DiskFull",
            "category": "usererror",
            "phase": "run",
            "message": (
                f"The task's output filled the node's disk ({free} bytes free, less than the "
                f"{self.disk_reserve_bytes} bytes kept free); its working directory was emptied"
            ),
            "values": {"FreeBytes": free, "FreeBytesAfterCleanup": after},
        }

    def _end_run(
        self, run: _Run, result: dict[str, Any], upload_error: dict[str, Any] | None
    ) -> None:
        if run.uploads:
            result["upload_error"] = upload_error
        self._write_record(run.key, result, new=False)
        result["key"] = run.key
        result["start_time"] = run.start_time
        self._emit(self._exited_event(result))

    # ------------------------------------------------------------------ timers

    def _push_timer(self, when: float, kind: str, run: _Run) -> None:
        heapq.heappush(self.timers, (when, next(self.seq), kind, run))

    def _run_timers(self) -> None:
        now = time.monotonic()
        while self.timers and self.timers[0][0] <= now:
            _, _, kind, run = heapq.heappop(self.timers)
            if run.done:
                continue
            if kind == "stamp":
                run.proc_start = _proc_start(run.pid)
                if run.proc_start is not None:
                    self._write_record(run.key, {"proc_start": run.proc_start}, new=False)
            elif kind == "wall":
                if run.adopted and _alive(run.owner_pid, run.owner_start):
                    # The agent that started it is alive and enforces its deadline; look again
                    # later in case it dies first.
                    self._push_timer(now + 1.0, "wall", run)
                    continue
                run.timed_out = True
                self._kill_group(run)
            elif kind == "poll":
                if _alive(run.pid, run.proc_start, run.start_time):
                    self._push_timer(now + ADOPT_POLL_SECONDS, "poll", run)
                else:
                    self._adopted_gone(run)
            elif kind == "grace":
                self._adopted_gone(run)
            elif kind == "kill":  # the SIGTERM grace period of a kill op is over
                self._kill_group(run)

    # ------------------------------------------------------------------ recovery

    def _op_recover(self, msg: dict[str, Any]) -> None:
        keys = msg.get("keys")
        if not isinstance(keys, list):
            raise _Invalid("OperationInvalid", "keys must be a list")
        for key in keys:
            if not isinstance(key, str) or not KEY_RE.match(key):
                self._emit({"ev": "lost", "key": key, "reason": "invalid key"})
                continue
            if (
                key in self.runs
                or key in self.adopted
                or key in self.pending_keys
                or key in self.uploading
            ):
                self._emit({"ev": "adopted", "key": key})
                continue
            rec = None if key in self.forgetting else self._read_record(key)
            if rec is None:
                self._emit({"ev": "lost", "key": key, "reason": "no run record"})
            elif "end_time" in rec:
                event = self._exited_event(rec)
                event["key"] = key
                event["recovered"] = True
                self._emit(event)
            elif isinstance(rec.get("pid"), int) and (
                _alive(rec["pid"], rec.get("proc_start"), rec.get("start_time"))
                or _alive(rec.get("agent_pid"), rec.get("agent_start"))
            ):
                self._adopt(key, rec)
            else:
                self._emit(
                    {
                        "ev": "lost",
                        "key": key,
                        "reason": "the process and its agent are gone without a result",
                    }
                )

    def _adopt(self, key: str, rec: dict[str, Any]) -> None:
        start = rec.get("start_time")
        run = _Run(
            key,
            int(rec["pid"]),
            str(rec.get("dir")),
            float(start) if isinstance(start, (int, float)) else 0.0,
        )
        run.adopted = True
        run.proc_start = rec.get("proc_start")
        run.owner_pid = rec.get("agent_pid")
        run.owner_start = rec.get("agent_start")
        self.adopted[key] = run
        self._emit({"ev": "adopted", "key": key})
        if not _alive(run.pid, run.proc_start, run.start_time):
            self._adopted_gone(run)  # its agent is alive and about to record the result
        else:
            watching = False
            if self.reaper == "pidfd":
                try:
                    run.pidfd = os.pidfd_open(run.pid)
                    self.sel.register(run.pidfd, selectors.EVENT_READ, run)
                    watching = True
                except OSError:
                    pass
            if not watching:
                self._push_timer(time.monotonic() + ADOPT_POLL_SECONDS, "poll", run)
        deadline = rec.get("deadline")
        if isinstance(deadline, (int, float)):
            self._push_timer(time.monotonic() + (deadline - time.time()), "wall", run)

    def _adopted_gone(self, run: _Run) -> None:
        """The adopted process has ended: report the recorded result, wait for it, or lose it."""
        rec = self._read_record(run.key)
        now = time.monotonic()
        if rec is not None and "end_time" in rec:
            event = self._exited_event(rec)
            event["killed"] = event["killed"] or run.killed
            event["timed_out"] = event["timed_out"] or run.timed_out
            event["recovered"] = True
        elif _alive(run.owner_pid, run.owner_start) and (
            not run.grace_until or now < run.grace_until or (rec or {}).get("uploading")
        ):
            # Its agent is alive (draining after its session dropped): it reaps the process
            # and writes the result in a moment.
            if not run.grace_until:
                run.grace_until = now + OWNER_GRACE_SECONDS
            self._push_timer(now + 0.02, "grace", run)
            return
        elif run.killed or run.timed_out:
            end = time.time()
            rec = {
                "key": run.key,
                "pid": run.pid,
                "dir": run.dir,
                "start_time": run.start_time,
                "end_time": end,
                "exit_code": None,
                "timed_out": run.timed_out,
                "killed": run.killed,
                "error": None,
            }
            self._write_record(run.key, rec, new=False)
            event = self._exited_event(rec)
            event["recovered"] = True
        else:
            event = {
                "ev": "lost",
                "key": run.key,
                "reason": "the task ended while no agent supervised it; its exit code is unknown",
            }
        run.done = True
        self._close_pidfd(run)
        self.adopted.pop(run.key, None)
        self._emit(event)

    def _op_forget(self, msg: dict[str, Any]) -> None:
        keys = msg.get("keys")
        if not isinstance(keys, list):
            raise _Invalid("OperationInvalid", "keys must be a list")
        keys = [k for k in keys if isinstance(k, str) and KEY_RE.match(k)]
        self.forgetting.update(keys)
        if self.prep_threads:
            self.prep_q.put(keys)  # unlinking is slow on a busy disk: off the loop
        else:
            self._unlink_records(keys)

    def _unlink_records(self, keys: list[str]) -> None:
        for key in keys:
            if key in self.pending_keys or key in self.runs:
                continue  # the key runs again (keys are not reused in practice): keep it
            try:
                os.unlink(self._record_path(key))
            except OSError:
                pass
        self.forgetting.difference_update(keys)

    # ------------------------------------------------------------------ files

    # ------------------------------------------------------------------ certificates

    def _op_certs(self, msg: dict[str, Any]) -> None:
        """Replace the node's certificates (see the module: ``certs``)."""
        items = msg.get("certificates")
        if not isinstance(items, list):
            raise _Invalid("OperationInvalid", "certificates must be a list")
        per_role: dict[str, dict[str, bytes]] = {role: {} for role in CERT_ROLES}
        for item in items:
            files = item.get("files") if isinstance(item, dict) else None
            visibility = item.get("visibility") if isinstance(item, dict) else None
            if not isinstance(files, dict) or not isinstance(visibility, list):
                raise _Invalid("OperationInvalid", "a certificate needs files and visibility")
            for name, data in files.items():
                if not isinstance(name, str) or not CERT_FILE_RE.match(name):
                    raise _Invalid("OperationInvalid", f"not a certificate file name: {name!r}")
                try:
                    raw = base64.b64decode(str(data), validate=True)
                except ValueError:
                    raise _Invalid("OperationInvalid", f"{name}: not base64") from None
                for role in CERT_ROLES:
                    if role in visibility:
                        per_role[role][name] = raw
        store = os.path.join(self.root, ".agent", "certs")
        os.makedirs(store, mode=0o700, exist_ok=True)
        os.chmod(store, 0o700)
        for role, files in per_role.items():
            final = os.path.join(store, role)
            fresh = final + ".new"
            shutil.rmtree(fresh, ignore_errors=True)
            os.mkdir(fresh, 0o700)
            for name, raw in files.items():
                _write_private(os.path.join(fresh, name), raw)
            shutil.rmtree(final, ignore_errors=True)
            os.rename(fresh, final)

    def _copy_certs(self, role: str, task_dir: str) -> None:
        """Give a task a private copy of the node's certificates of ``role`` (thread-safe)."""
        source = os.path.join(self.root, ".agent", "certs", role)
        target = task_dir + "/certs"
        if os.path.lexists(target):  # a rerun: the node's set may have changed
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            else:
                os.unlink(target)
        try:
            names = sorted(os.listdir(source))
        except FileNotFoundError:
            return
        if not names:
            return
        os.mkdir(target, 0o700)
        for name in names:
            if CERT_FILE_RE.match(name):
                with open(os.path.join(source, name), "rb") as f:
                    _write_private(os.path.join(target, name), f.read())

    def _own_state(self, rel: str, what: str) -> None:
        if rel == ".agent" or rel.startswith(".agent/"):
            raise _Invalid("OperationInvalid", f"{what} is the agent's own state: {rel!r}")

    def _op_delete(self, msg: dict[str, Any]) -> None:
        rel = self._rel(msg.get("dir"), "dir")
        self._own_state(rel, "dir")
        parent = self._resolve(os.path.dirname(rel), "dir")
        target = os.path.join(parent, os.path.basename(rel))
        try:
            if os.path.islink(target):
                os.unlink(target)
            elif os.path.isdir(target):
                self._remove_tree(target)
            elif os.path.lexists(target):
                os.unlink(target)
        except OSError as exc:
            raise _Invalid("OperationInvalid", f"cannot delete {rel}: {exc}") from exc
        if "ev_id" in msg:
            self._emit({"ev": "deleted", "dir": msg.get("dir"), "ev_id": msg["ev_id"]})

    def _remove_tree(self, target: str) -> None:
        """Remove the tree ``target``: renamed aside in one step, then removed out of reach."""
        aside = os.path.join(self.trash_dir, f"{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.makedirs(self.trash_dir, exist_ok=True)
            os.rename(target, aside)
        except OSError as exc:
            if exc.errno == errno.ENOENT and not os.path.lexists(target):
                return  # removed meanwhile
            shutil.rmtree(target)  # another file system (a mount): removed where it is
            return
        shutil.rmtree(aside, ignore_errors=True)  # out of reach; a leftover goes at next start

    @staticmethod
    def _file_entry(name: str, st: os.stat_result, kind: str) -> dict[str, Any]:
        is_dir = kind == "dir"
        return {
            "name": name,
            "is_directory": is_dir,
            "kind": kind,
            "content_length": st.st_size if kind == "file" else 0,
            "creation_time": getattr(st, "st_birthtime", st.st_ctime),
            "last_modified": st.st_mtime,
            "file_mode": f"0o{stat.S_IMODE(st.st_mode):o}",
        }

    def _within(self, msg: dict[str, Any], rel: str) -> str:
        """The directory (absolute) that ``rel`` must lie in: ``within`` (e.g. a task's
        directory) or the root. No link is followed below the root, so this is lexical."""
        within = msg.get("within")
        if within is None:
            return self.root
        top = self._rel(within, "within")
        if rel != top and not rel.startswith(top + "/"):
            raise _Invalid("OperationInvalid", f"path escapes {within!r}: {rel!r}")
        return self.root + "/" + top

    def _open(self, rel: str) -> tuple[int, os.stat_result]:
        try:
            return open_beneath(self.root, rel)
        except PathRefused as exc:
            raise _Invalid(exc.code, exc.message) from None

    def _op_list_files(self, msg: dict[str, Any]) -> None:
        rel = self._rel(msg.get("path", ""), "path", allow_root=True)
        self._within(msg, rel)
        skip = (".agent",) if not rel else ()
        try:
            found = scan_beneath(self.root, rel, bool(msg.get("recursive")), skip)
        except PathRefused as exc:
            raise _Invalid(exc.code, exc.message) from None
        files = [self._file_entry(name, st, kind) for name, st, kind in found]
        self._emit({"ev": "files", "req": msg.get("req"), "path": rel, "files": files})

    def _op_read_file(self, msg: dict[str, Any]) -> None:
        rel = self._rel(msg.get("path"), "path")
        top = self._within(msg, rel)
        offset = msg.get("offset") or 0
        length = msg.get("length")
        if not isinstance(offset, int) or offset < 0:
            raise _Invalid("OperationInvalid", "offset must be an integer >= 0")
        if length is not None and (not isinstance(length, int) or length < 0):
            raise _Invalid("OperationInvalid", "length must be an integer >= 0 or null")
        want = MAX_READ_BYTES if length is None else min(length, MAX_READ_BYTES)
        fd, st = self._open(rel)
        try:
            if not stat.S_ISREG(st.st_mode):
                raise _Invalid("OperationInvalid", f"{rel} is not a regular file")
            try:
                check_links(top, rel, st)
            except PathRefused as exc:
                raise _Invalid(exc.code, exc.message) from None
            chunks = []
            pos = offset
            while want > 0:
                chunk = os.pread(fd, want, pos)
                if not chunk:
                    break
                chunks.append(chunk)
                pos += len(chunk)
                want -= len(chunk)
        finally:
            os.close(fd)
        self._emit(
            {
                "ev": "file",
                "req": msg.get("req"),
                "path": rel,
                "offset": offset,
                "data_b64": base64.b64encode(b"".join(chunks)).decode("ascii"),
                "size": st.st_size,
                "last_modified": st.st_mtime,
            }
        )

    def _op_delete_file(self, msg: dict[str, Any]) -> None:
        rel = self._rel(msg.get("path"), "path")
        self._own_state(rel, "path")
        self._within(msg, rel)
        parent, _, name = rel.rpartition("/")
        try:
            fd, _st = open_beneath(self.root, parent, leaf=False)
        except PathRefused as exc:
            raise _Invalid(exc.code, exc.message) from None
        try:
            try:
                st = os.lstat(name, dir_fd=fd)
            except OSError as exc:
                raise _Invalid("FileNotFound", f"{rel}: {exc.strerror}") from exc
            try:
                if stat.S_ISDIR(st.st_mode) and msg.get("recursive"):
                    remove_beneath(fd, name)
                elif stat.S_ISDIR(st.st_mode):
                    os.rmdir(name, dir_fd=fd)
                else:
                    os.unlink(name, dir_fd=fd)
            except OSError as exc:
                raise _Invalid("OperationInvalid", f"cannot delete {rel}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        self._emit({"ev": "file_deleted", "req": msg.get("req"), "path": rel})

    # ------------------------------------------------------------------ ping

    def _op_ping(self, msg: dict[str, Any]) -> None:
        self._expire_users()
        try:
            load: list[float] | None = list(os.getloadavg())
        except (OSError, AttributeError):
            load = None
        try:
            vfs = os.statvfs(self.root)
            disk_free: int | None = vfs.f_bavail * vfs.f_frsize
        except (OSError, AttributeError):
            disk_free = None
        self._emit(
            {
                "ev": "pong",
                "time": time.time(),
                "running": sorted(self.runs),
                "adopted": sorted(self.adopted),
                "load": load,
                "memory_available_bytes": _meminfo("MemAvailable")
                or _sysconf_bytes("SC_AVPHYS_PAGES"),
                "disk_free_bytes": disk_free,
            }
        )

    # ------------------------------------------------------------------ node users

    def _op_user(self, msg: dict[str, Any]) -> None:
        op = msg["op"]
        removed: list[str] = []
        if op == "add_user":
            self.users.add(msg)
        elif op == "update_user":
            self.users.update(msg)
        elif op == "delete_user":
            self.users.delete(msg)
        else:
            removed = self.users.remove_all()
        answer: dict[str, Any] = {"ev": "user", "op": op, "req": msg.get("req")}
        if op == "remove_users":
            answer["removed"] = removed
        else:
            answer["name"] = msg.get("name")
        self._emit(answer)

    def _expire_users(self) -> None:
        try:
            gone = self.users.expire(time.time())
        except _Invalid as exc:
            self._diag(f"cannot remove expired users: {exc.message}")
            return
        for name in gone:
            self._emit({"ev": "user_expired", "name": name})

    # ------------------------------------------------------------------ metrics

    def _op_metrics(self, msg: dict[str, Any]) -> None:
        now = time.time()
        counters: dict[str, int | None] = dict.fromkeys(
            (
                "disk_read_bytes",
                "disk_write_bytes",
                "disk_read_ops",
                "disk_write_ops",
                "net_in_bytes",
                "net_out_bytes",
            )
        )
        cpu: tuple[int, int] | None = None  # (busy, total) jiffies since boot
        try:
            with open("/proc/stat", "rb") as f:
                fields = [int(x) for x in f.readline().split()[1:9]]
            idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
            cpu = (sum(fields) - idle, sum(fields))
        except (OSError, ValueError, IndexError):
            pass
        try:
            # Whole physical disks only (those with a device behind them): partitions, loop,
            # device-mapper and RAID devices would count the same bytes twice.
            disks = {
                n for n in os.listdir("/sys/block") if os.path.exists(f"/sys/block/{n}/device")
            }
            totals = [0, 0, 0, 0]  # sectors read, sectors written, reads, writes
            with open("/proc/diskstats", "rb") as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 10 and parts[2].decode() in disks:
                        totals[0] += int(parts[5])
                        totals[1] += int(parts[9])
                        totals[2] += int(parts[3])
                        totals[3] += int(parts[7])
            counters.update(
                disk_read_bytes=totals[0] * 512,
                disk_write_bytes=totals[1] * 512,
                disk_read_ops=totals[2],
                disk_write_ops=totals[3],
            )
        except (OSError, ValueError, IndexError):
            pass
        try:
            received = sent = 0
            with open("/proc/net/dev", "rb") as f:
                for line in f.readlines()[2:]:
                    iface, _, data = line.partition(b":")
                    values = data.split()
                    if iface.strip() != b"lo" and len(values) >= 9:
                        received += int(values[0])
                        sent += int(values[8])
            counters.update(net_in_bytes=received, net_out_bytes=sent)
        except (OSError, ValueError, IndexError):
            pass
        try:
            vfs = os.statvfs(self.root)
            disk_used: int | None = (vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize
        except (OSError, AttributeError):
            disk_used = None
        total_mem, available = _meminfo("MemTotal"), _meminfo("MemAvailable")
        event: dict[str, Any] = {
            "ev": "metrics",
            "req": msg.get("req"),
            "time": now,
            "interval": None,
            "cpu_percent": None,
            "memory_bytes": total_mem - available if total_mem and available else None,
            "disk_bytes": disk_used,
        }
        # Deltas against the previous request's readings (kept on the agent between requests).
        previous: dict[str, Any] | None = getattr(self, "_metrics_previous", None)
        self._metrics_previous = {"time": now, "cpu": cpu, **counters}
        if cpu is not None:
            busy, total = cpu
            if previous is not None and previous["cpu"] is not None:
                busy, total = busy - previous["cpu"][0], total - previous["cpu"][1]
            event["cpu_percent"] = min(100.0, max(0.0, 100.0 * busy / total)) if total > 0 else 0.0
        for name, value in counters.items():
            before = previous.get(name) if previous is not None else None
            # A counter that went backwards (a disk or interface gone) counts as no increase.
            if value is not None and before is not None:
                event[name] = max(0, value - before)
            else:
                event[name] = None
        if previous is not None:
            event["interval"] = max(0.0, now - previous["time"])
        self._emit(event)


def default_orphan_command() -> list[str]:
    """``shutdown -h now``, through ``sudo -n`` unless the agent runs as root."""
    command = ["shutdown", "-h", "now"]
    return command if os.geteuid() == 0 else ["sudo", "-n", *command]


def _protect_inherited_fds() -> None:
    """Make every inherited descriptor above 2 close-on-exec: posix_spawn closes nothing."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except (OSError, ValueError):
        fds = list(range(3, 256))
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


def main(argv: list[str] | None = None) -> int:
    """Command line: ``agent.py --root DIR [--reaper auto|pidfd|sigchld] [--spawn ...]``."""
    parser = argparse.ArgumentParser(prog="agent.py", description="prefect-batch node agent")
    parser.add_argument("--root", required=True, help="node root directory")
    parser.add_argument("--reaper", choices=("auto", "pidfd", "sigchld"), default="auto")
    parser.add_argument("--spawn", choices=("auto", "posix_spawn", "popen"), default="auto")
    parser.add_argument(
        "--prep-threads",
        type=int,
        default=8,
        help="threads that make task directories and files when the disk is slow (0: none)",
    )
    parser.add_argument(
        "--prep-mode",
        choices=("auto", "threads", "inline"),
        default="auto",
        help="auto: prep threads only while preparing a task is slow",
    )
    parser.add_argument(
        "--disk-reserve-bytes",
        type=int,
        default=DISK_RESERVE_BYTES,
        help="free disk space a resource file download may not use up",
    )
    parser.add_argument(
        "--confine", action="store_true", help="run tasks under Landlock (Linux), no capabilities"
    )
    parser.add_argument("--task-read", action="append", default=[], help="a tree tasks may read")
    parser.add_argument("--task-path", action="append", default=[], help="a tree tasks may write")
    parser.add_argument("--protect", action="append", default=[], help="a tree no task may reach")
    parser.add_argument(
        "--confine-optional",
        action="store_true",
        help="with --confine: where this kernel cannot confine, run tasks unconfined and say "
        "why in hello instead of exiting",
    )
    parser.add_argument(
        "--imds-url", default=None, help="poll this IMDSv2 endpoint for spot notices (EC2)"
    )
    parser.add_argument("--imds-poll-seconds", type=float, default=IMDS_POLL_SECONDS)
    parser.add_argument("--imds-timeout-seconds", type=float, default=IMDS_TIMEOUT_SECONDS)
    parser.add_argument(
        "--orphan-timeout-seconds",
        type=float,
        default=0.0,
        help="with no request from the service for this long, kill every task and run the "
        "orphan command (0: never)",
    )
    parser.add_argument(
        "--orphan-command",
        default=None,
        help="split like a shell would (no shell runs it); default: shutdown -h now "
        "(sudo -n unless root)",
    )
    args = parser.parse_args(argv)
    _protect_inherited_fds()
    set_not_dumpable()  # same-user processes cannot read this agent's environ or memory
    confinement = None
    unconfined = None
    if args.confine:
        try:
            confinement = Confinement(args.task_read, args.task_path, args.protect)
        except OSError as exc:  # refuse to run tasks unconfined when asked to confine them
            sys.stderr.write(f"agent: cannot confine tasks: {exc}\n")
            if not args.confine_optional:
                return 3
            unconfined = f"cannot confine tasks on {os.uname().nodename}: {exc.strerror or exc}"
    agent = Agent(
        args.root,
        reaper=args.reaper,
        spawn=args.spawn,
        prep_threads=args.prep_threads,
        prep_mode=args.prep_mode,
        disk_reserve_bytes=args.disk_reserve_bytes,
        confinement=confinement,
        unconfined=unconfined,
        imds_url=args.imds_url,
        imds_poll_seconds=args.imds_poll_seconds,
        imds_timeout_seconds=args.imds_timeout_seconds,
        orphan_timeout_seconds=args.orphan_timeout_seconds,
        orphan_command=shlex.split(args.orphan_command) if args.orphan_command else None,
    )
    return agent.serve()


if __name__ == "__main__":
    sys.exit(main())
