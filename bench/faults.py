"""The fault suite: crashes and outages under a running job, each checked for lost work.

    python bench/faults.py [--rounds 20] [--tasks-per-round 20] [--agent-tasks 40]
                           [--outage-seconds 10] [--ssh-tasks 60] [--ssh-down-seconds 5]
                           [--only abcdef] [--quick] [--seed 16]

Every scenario runs ``prefect-batch server start`` as a process on 127.0.0.1 (a free port, a
temporary home), drives it with the official azure-batch SDK, and gives it a job of tasks that
each append their task id to a ledger file when their work is done (``/bin/sh -c`` command
lines). Afterwards it checks, from the service's answers and the ledger:

* every accepted task completed (``lost``: accepted and not completed, or completed and absent
  from the ledger — it never ran to its end);
* tasks that ran more than once (ledger lines > 1) — allowed (at-least-once: a task in flight
  when its server or node died may run again), but only when the re-runs are accounted for by
  its ``requeueCount`` + ``retryCount`` (``uncounted``: a re-run the service does not admit).

The scenarios:

(a) ``kill -9`` of the server mid-job, ``--rounds`` times: each round starts the server on the
    same home (SQLite), adds ``--tasks-per-round`` tasks (half of them just before the kill) and
    kills it at a random moment while they run; a last start finishes the job. After its
    shutdown the process table is checked for node agents and task processes of the home left
    behind (``orphans``).
(b) ``kill -9`` of one node agent mid-job: its tasks are requeued (``requeueCount``), the node
    comes back (or is marked unusable), nothing is lost.
(c) two servers on one PostgreSQL database (a private cluster, below): the one holding the
    pool's lease is killed mid-job; the other takes the lease over and completes every task.
(d) the store unreachable: the private PostgreSQL cluster is stopped for ``--outage-seconds``
    mid-job; requests meanwhile must answer 503 ``ServerBusy`` (never a 500) and a task added
    then must not exist afterwards; once the cluster is back the job completes.
(e) as (c), the two servers on one SQLite home (``PREFECT_BATCH_HOME``): the second start is
    not refused; the same guarantee is checked.
(f) an SSH pool of 3 loopback hosts (private sshd on 127.0.0.2-4,
    :mod:`prefect_batch.testing.sshd`): one host's sshd crashes (``kill -9`` of the listener
    and of the agent's session; the agent and its tasks live on) and restarts after
    ``--ssh-down-seconds``; then another host is lost whole (sshd, session, agent and task
    processes all ``kill -9``) and comes back after as long. Nothing lost, re-runs counted
    (requeues), the three nodes back at the end, nothing left running on the hosts.

PostgreSQL for (c) and (d) is a throw-away cluster of the run's own
(:class:`prefect_batch.testing.postgres.PrivatePostgres`: ``initdb`` in a temporary directory,
``127.0.0.1`` and a free port); the machine's own clusters are never stopped or touched.

Every wait is bounded (``--timeout`` per wait); loopback only. Each scenario prints its counts;
a summary table ends the run, and the exit status is non-zero when any scenario lost a task,
ran one again without counting it, left an orphan or answered a 500. ``--quick`` (CI): 3
rounds, fewer tasks, a 4 s outage, a 3 s SSH host outage.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402
from azure.batch import BatchClient as SdkClient  # noqa: E402
from azure.batch import models  # noqa: E402
from azure.core.credentials import AzureNamedKeyCredential  # noqa: E402

from prefect_batch.agent import AGENT_PATH  # noqa: E402
from prefect_batch.core.sharedkey import authorization_header, http_date, new_key  # noqa: E402
from prefect_batch.testing import gate_command  # noqa: E402
from prefect_batch.testing.postgres import PrivatePostgres  # noqa: E402
from prefect_batch.testing.server import server_command, server_env  # noqa: E402

ACCOUNT = "faults"
API_VERSION = "2025-06-01"
WAIT_SECONDS = 180.0
"""Default bound of every wait (a server start, a job's completion)."""
ORPHAN_GRACE_SECONDS = 30.0
"""How long agents of a stopped server may take to drain and exit before they count as orphans."""


class FaultError(RuntimeError):
    """A scenario could not proceed (a server did not start, a wait ran out)."""


# -- outcome ---------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one scenario counted; ``failures`` empty means it passed."""

    name: str
    accepted: int = 0
    completed: int = 0
    lost: int = 0
    reran: int = 0
    counted: int = 0
    uncounted: int = 0
    requeues: int = 0
    retries: int = 0
    notes: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    def fail(self, why: str) -> None:
        self.failures.append(why)

    def line(self) -> str:
        notes = " ".join(f"{k}={v}" for k, v in self.notes.items())
        return (
            f"{self.name:<42} {self.accepted:>6} {self.completed:>6} {self.lost:>5} "
            f"{self.reran:>6} {self.counted:>7} {self.uncounted:>9} {self.requeues:>8} "
            f"{self.seconds:>7.1f}  {'ok' if self.ok else 'FAIL'}  {notes}"
        )


HEADER = (
    f"{'scenario':<42} {'tasks':>6} {'done':>6} {'lost':>5} {'ran>1':>6} {'counted':>7} "
    f"{'uncounted':>9} {'requeues':>8} {'seconds':>7}  result  notes"
)


def report(outcome: Outcome) -> None:
    print(f"  counts: {HEADER.split(None, 1)[1]}")
    print(f"  {outcome.line()}")
    for why in outcome.failures:
        print(f"  FAILED: {why}")
    sys.stdout.flush()


# -- helpers -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` (0.1 s) until truthy; :class:`FaultError` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception as exc:  # noqa: BLE001 - a request answered badly: poll again
            value, last = None, exc
        else:
            last = value
        if value:
            return value
        if time.monotonic() > deadline:
            raise FaultError(f"{what}: not reached within {timeout:.0f} s (last: {last!r})")
        time.sleep(0.1)


class Server:
    """``prefect-batch server start`` as a process, on 127.0.0.1."""

    def __init__(
        self,
        home: Path,
        key: str,
        *,
        database_url: str | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.home = home
        self.extra_env = dict(env or {})
        # The tasks' ledgers and gates: a directory of its own beside the home, open to the
        # server's confined tasks (it exists before the server starts, and holds no home).
        self.shared = home.parent / "tasks"
        self.shared.mkdir(parents=True, exist_ok=True)
        self.key = key
        self.database_url = database_url
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = home.parent / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = WAIT_SECONDS) -> Server:
        env = server_env(
            self.home,
            ACCOUNT,
            self.key,
            database_url=self.database_url,
            task_paths=[self.shared],
        )
        env.update(self.extra_env)
        cmd = server_command(self.port)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        proc = self.proc

        def up() -> bool:
            if proc.poll() is not None:
                raise FaultError(f"the server exited ({proc.returncode}); see {self.log}")
            try:
                return httpx.get(f"{self.url}/openapi.json", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        deadline = time.monotonic() + timeout
        while not up():
            if time.monotonic() > deadline:
                self.kill()
                raise FaultError(f"the server did not answer within {timeout:.0f} s")
            time.sleep(0.1)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown at all."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 30 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def sdk(self) -> SdkClient:
        return SdkClient(
            self.url,
            AzureNamedKeyCredential(ACCOUNT, self.key),
            connection_timeout=10,
            read_timeout=30,
        )

    def send(self, method: str, path: str, body: Any = None) -> httpx.Response:
        """One SharedKey-signed request, not retried (what a client sees first)."""
        headers = {"ocp-date": http_date(datetime.now(timezone.utc))}
        content = None
        if body is not None:
            content = json.dumps(body).encode()
            headers["content-type"] = "application/json; odata=minimalmetadata"
        with httpx.Client(base_url=self.url, timeout=10) as http:
            request = http.build_request(
                method, path, params={"api-version": API_VERSION}, content=content, headers=headers
            )
            if method not in ("GET", "HEAD") and "content-length" not in request.headers:
                request.headers["content-length"] = "0"
            raw_path, _, query = request.url.raw_path.decode().partition("?")
            request.headers["Authorization"] = authorization_header(
                method, raw_path, query, list(request.headers.items()), ACCOUNT, self.key
            )
            return http.send(request)


@contextmanager
def running(server: Server) -> Iterator[Server]:
    server.start()
    try:
        yield server
    finally:
        server.stop()


def ledger_task(task_id: str, ledger: Path, seconds: float) -> models.BatchTaskCreateOptions:
    """A task that works ``seconds``, then appends its id to ``ledger`` (one line per run)."""
    work = f"sleep {seconds:.2f}; " if seconds > 0 else ""
    return models.BatchTaskCreateOptions(
        id=task_id, command_line=f"/bin/sh -c '{work}echo $AZ_BATCH_TASK_ID >> {ledger}'"
    )


def create_pool_and_job(sdk: SdkClient, nodes: int = 2, slots: int = 4) -> None:
    sdk.create_pool(
        models.BatchPoolCreateOptions(
            id="pool", vm_size="local", target_dedicated_nodes=nodes, task_slots_per_node=slots
        )
    )
    sdk.create_job(
        models.BatchJobCreateOptions(id="job", pool_info=models.BatchPoolInfo(pool_id="pool"))
    )


def add_tasks(sdk: SdkClient, tasks: list[models.BatchTaskCreateOptions]) -> list[str]:
    """Add ``tasks`` (collections of up to 100, in order); the ids the service accepted."""
    accepted: list[str] = []
    for i in range(0, len(tasks), 100):
        chunk = tasks[i : i + 100]
        result = sdk.create_task_collection("job", models.BatchTaskGroup(task_values=chunk))
        for value in result.result_values or []:
            if value.status == models.BatchTaskAddStatus.SUCCESS:
                accepted.append(value.task_id)
            else:
                raise FaultError(f"task {value.task_id} refused: {value.error}")
    return accepted


def counts(sdk: SdkClient) -> models.BatchTaskCounts:
    return sdk.get_job_task_counts("job").task_counts


def wait_completed(sdk: SdkClient, n: int, timeout: float) -> None:
    wait_until(lambda: counts(sdk).completed >= n, timeout, f"{n} tasks completed")


def ledger_runs(ledger: Path) -> Counter[str]:
    if not ledger.exists():
        return Counter()
    return Counter(line.strip() for line in ledger.read_text().splitlines() if line.strip())


def judge(outcome: Outcome, sdk: SdkClient, accepted: list[str], ledger: Path) -> None:
    """Fill ``outcome``'s counts from the service's tasks and the ledger."""
    listed = {t.id: t for t in sdk.list_tasks("job")}
    runs = ledger_runs(ledger)
    outcome.accepted = len(accepted)
    outcome.completed = sum(t.state == models.BatchTaskState.COMPLETED for t in listed.values())
    missing = [
        t
        for t in accepted
        if t not in listed or listed[t].state != models.BatchTaskState.COMPLETED or not runs[t]
    ]
    outcome.lost = len(missing)
    failed = [t.id for t in listed.values() if (t.execution_info and t.execution_info.exit_code)]
    for t in listed.values():
        info = t.execution_info
        requeues = (info.requeue_count or 0) if info else 0
        retries = (info.retry_count or 0) if info else 0
        outcome.requeues += requeues
        outcome.retries += retries
        if runs[t.id] > 1:
            outcome.reran += 1
            if runs[t.id] - 1 <= requeues + retries:
                outcome.counted += 1
            else:
                outcome.uncounted += 1
    strangers = set(runs) - set(accepted)
    if outcome.lost:
        outcome.fail(f"{outcome.lost} accepted tasks lost: {missing[:10]}")
    if outcome.uncounted:
        outcome.fail(f"{outcome.uncounted} tasks ran again without a requeue or retry counted")
    if failed:
        outcome.fail(f"{len(failed)} tasks failed: {failed[:10]}")
    if strangers:
        outcome.fail(f"the ledger names tasks never accepted: {sorted(strangers)[:10]}")


def home_processes(home: Path) -> list[tuple[int, str]]:
    """Processes of this run's home: node agents (``--root`` under it) and anything working
    in a directory under it (task processes)."""
    return processes_under(home, agents_only=True)


def agent_pids(home: Path) -> dict[str, int]:
    """Live node agents of ``home``: their ``--root`` -> pid."""
    out = {}
    for pid, _ in home_processes(home):
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        text = [w.decode(errors="replace") for w in words]
        if str(AGENT_PATH) in text and "--root" in text:
            out[text[text.index("--root") + 1]] = pid
    return out


def check_orphans(
    outcome: Outcome,
    home: Path,
    left_of: Callable[[Path], list[Any]] | None = None,
    where: str = "after the last shutdown",
) -> None:
    """After the last server stopped: nothing of ``home`` may still run (agents drain first).

    ``left_of``: what still runs there (default :func:`home_processes`).
    """
    probe = left_of or home_processes
    try:
        wait_until(lambda: not probe(home), ORPHAN_GRACE_SECONDS, "processes exit")
    except FaultError:
        pass
    left = probe(home)
    outcome.notes["orphans"] = len(left)
    if left:
        outcome.fail(f"{len(left)} processes left {where}: {left[:5]}")


# -- (a) the server killed, N rounds ---------------------------------------------------------


def server_kills(
    base: Path, *, rounds: int, per_round: int, seed: int, timeout: float = WAIT_SECONDS
) -> Outcome:
    """(a) ``kill -9`` of the server mid-job, ``rounds`` times, then a last start finishes."""
    outcome = Outcome(f"(a) server kill -9 x{rounds}")
    start = time.monotonic()
    rng = random.Random(seed)
    home, ledger = base / "a-home", base / "tasks" / "a-ledger.txt"
    server = Server(home, new_key())
    accepted: list[str] = []
    agents_seen: set[int] = set()
    in_flight_at_kill = 0
    try:
        for r in range(rounds):
            server.start(timeout)
            sdk = server.sdk()
            try:
                if r == 0:
                    create_pool_and_job(sdk)
                batch = [
                    ledger_task(f"r{r:02d}t{i:02d}", ledger, rng.uniform(0.2, 0.8))
                    for i in range(per_round)
                ]
                half = per_round // 2
                accepted += add_tasks(sdk, batch[:half])
                wait_until(lambda c=sdk: counts(c).running > 0, timeout, "tasks running")
                time.sleep(rng.uniform(0.0, 0.6))
                accepted += add_tasks(sdk, batch[half:])  # accepted just before the crash
                in_flight_at_kill += counts(sdk).running
            finally:
                sdk.close()
            agents_seen |= set(agent_pids(home).values())
            server.kill()
        server.start(timeout)
        sdk = server.sdk()
        try:
            wait_completed(sdk, len(accepted), timeout)
            judge(outcome, sdk, accepted, ledger)
        finally:
            sdk.close()
        agents_seen |= set(agent_pids(home).values())
        server.stop()
        outcome.notes["running_at_kills"] = in_flight_at_kill
        outcome.notes["agent_pids"] = len(agents_seen)
        check_orphans(outcome, home)
    except Exception as exc:  # noqa: BLE001 - any error fails this scenario, not the suite
        outcome.fail(f"{type(exc).__name__}: {exc}")
    finally:
        server.kill()
        outcome.seconds = time.monotonic() - start
    return outcome


# -- (b) one node agent killed ----------------------------------------------------------------


def agent_kill(base: Path, *, tasks: int, timeout: float = WAIT_SECONDS) -> Outcome:
    """(b) ``kill -9`` of the agent of a node running tasks: requeued, nothing lost."""
    outcome = Outcome("(b) node agent kill -9")
    start = time.monotonic()
    home, ledger = base / "b-home", base / "tasks" / "b-ledger.txt"
    server = Server(home, new_key())
    try:
        with running(server):
            sdk = server.sdk()
            try:
                create_pool_and_job(sdk)
                accepted = add_tasks(
                    sdk, [ledger_task(f"t{i:03d}", ledger, 0.6) for i in range(tasks)]
                )
                wait_until(lambda: counts(sdk).running >= 6, timeout, "tasks running")
                busy = [
                    n.id
                    for n in sdk.list_nodes("pool")
                    if n.state == models.BatchNodeState.RUNNING and n.recent_tasks
                ]
                agents = agent_pids(home)
                victim = next(
                    (pid for root, pid in agents.items() if any(b in root for b in busy)), None
                )
                if victim is None and agents:
                    victim = next(iter(agents.values()))
                if victim is None:
                    raise FaultError("no node agent found to kill")
                before = counts(sdk).running
                os.kill(victim, signal.SIGKILL)
                outcome.notes["running_at_kill"] = before
                wait_completed(sdk, len(accepted), timeout)
                judge(outcome, sdk, accepted, ledger)
                states = Counter(
                    str(getattr(n.state, "value", n.state)) for n in sdk.list_nodes("pool")
                )
                outcome.notes["nodes"] = ",".join(f"{k}:{v}" for k, v in sorted(states.items()))
                if outcome.requeues == 0:
                    outcome.notes["requeued"] = "none (the node's tasks had ended)"
            finally:
                sdk.close()
        check_orphans(outcome, home)
    except Exception as exc:  # noqa: BLE001 - any error fails this scenario, not the suite
        outcome.fail(f"{type(exc).__name__}: {exc}")
    finally:
        server.kill()
        outcome.seconds = time.monotonic() - start
    return outcome


# -- (c) two servers on one PostgreSQL database --------------------------------------------------


def lease_holder(database_url: str) -> int | None:
    from sqlalchemy import create_engine, select

    from prefect_batch.store.schema import pools

    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            owner = conn.execute(select(pools.c.lease_owner).where(pools.c.id == "pool")).scalar()
    finally:
        engine.dispose()
    return int(owner.split(":")[1]) if owner else None


def twin_failover(
    base: Path, pg: PrivatePostgres | None, *, tasks: int, timeout: float = WAIT_SECONDS
) -> Outcome:
    """(c) Two servers on one database; the lease holder killed; the other finishes the job.

    ``pg`` None: (e), the two servers on one SQLite home instead.
    """
    letter = "c" if pg is not None else "e"
    where = "PostgreSQL" if pg is not None else "one SQLite home"
    outcome = Outcome(f"({letter}) 2 servers on {where}, 1 killed")
    start = time.monotonic()
    home = base / f"{letter}-home"
    ledger, gate = base / "tasks" / f"{letter}-ledger.txt", base / "tasks" / f"{letter}-gate"
    key = new_key()
    database = pg.create_database("twin") if pg is not None else None
    url = database or f"sqlite:///{home / 'batch.db'}"
    a = Server(home, key, database_url=database)
    b = Server(home, key, database_url=database)
    try:
        with running(a), running(b):
            sdks = [a.sdk(), b.sdk()]
            try:
                create_pool_and_job(sdks[0])
                # A third finish at once; the others wait on a gate opened after the kill, so
                # the holder dies with tasks in flight whatever the machine's speed.
                quick = tasks // 3
                batch = [
                    ledger_task(f"t{i:03d}", ledger, 0)
                    if i < quick
                    else models.BatchTaskCreateOptions(
                        id=f"t{i:03d}",
                        command_line=gate_command(gate, then=f"echo $AZ_BATCH_TASK_ID >> {ledger}"),
                    )
                    for i in range(tasks)
                ]
                accepted = add_tasks(sdks[1], batch)
                wait_completed(sdks[0], quick, timeout)
                wait_until(lambda: counts(sdks[0]).running >= 8, timeout, "8 tasks running")
                holder = wait_until(lambda: lease_holder(url), timeout, "a lease holder")
                if holder not in (a.pid, b.pid):
                    raise FaultError(f"the lease is held by pid {holder}, neither server")
                victim, survivor = (a, 1) if holder == a.pid else (b, 0)
                outcome.notes["running_at_kill"] = counts(sdks[survivor]).running
                victim.kill()
                gate.touch()
                taken = wait_until(
                    lambda: lease_holder(url) == (a, b)[survivor].pid,
                    timeout,
                    "the survivor holds the lease",
                )
                outcome.notes["takeover"] = "yes" if taken else "no"
                wait_completed(sdks[survivor], len(accepted), timeout)
                judge(outcome, sdks[survivor], accepted, ledger)
            finally:
                for sdk in sdks:
                    sdk.close()
        check_orphans(outcome, home)
    except Exception as exc:  # noqa: BLE001 - any error fails this scenario, not the suite
        outcome.fail(f"{type(exc).__name__}: {exc}")
    finally:
        a.kill()
        b.kill()
        gate.touch()
        outcome.seconds = time.monotonic() - start
    return outcome


# -- (d) the store unreachable -----------------------------------------------------------------


def store_outage(
    base: Path,
    pg: PrivatePostgres,
    *,
    tasks: int,
    outage_seconds: float,
    timeout: float = WAIT_SECONDS,
) -> Outcome:
    """(d) The private PostgreSQL cluster stopped for ``outage_seconds`` mid-job."""
    outcome = Outcome(f"(d) PostgreSQL stopped {outage_seconds:.0f} s")
    start = time.monotonic()
    home, ledger = base / "d-home", base / "tasks" / "d-ledger.txt"
    server = Server(home, new_key(), database_url=pg.create_database("outage"))
    try:
        with running(server):
            sdk = server.sdk()
            try:
                create_pool_and_job(sdk)
                accepted = add_tasks(
                    sdk, [ledger_task(f"t{i:03d}", ledger, 0.3) for i in range(tasks)]
                )
                wait_completed(sdk, max(1, tasks // 6), timeout)
                outcome.notes["running_at_stop"] = counts(sdk).running
                answers: Counter[str] = Counter()
                write = None
                pg.stop("fast")
                try:
                    until = time.monotonic() + outage_seconds
                    while time.monotonic() < until:
                        try:
                            got = server.send("GET", "/jobs/job")
                            code = got.json().get("code", "") if got.content else ""
                            answers[f"{got.status_code}{' ' + code if code else ''}"] += 1
                        except httpx.HTTPError as exc:
                            answers[type(exc).__name__] += 1
                        if write is None:
                            body = {"id": "during-outage", "commandLine": "/bin/true"}
                            write = server.send("POST", "/jobs/job/tasks", body)
                        time.sleep(0.25)
                finally:
                    pg.start()
                outcome.notes["answers"] = ",".join(f"{k}:{v}" for k, v in sorted(answers.items()))
                if set(answers) != {"503 ServerBusy"}:
                    outcome.fail(f"answers during the outage other than 503 ServerBusy: {answers}")
                if write is None or write.status_code != 503:
                    outcome.fail(f"a task added during the outage: {write and write.status_code}")
                wait_completed(sdk, len(accepted), timeout)
                after = server.send("GET", "/jobs/job/tasks/during-outage")
                if after.status_code != 404:
                    outcome.fail(f"the task refused during the outage exists ({after.status_code})")
                judge(outcome, sdk, accepted, ledger)
            finally:
                sdk.close()
        check_orphans(outcome, home)
    except Exception as exc:  # noqa: BLE001 - any error fails this scenario, not the suite
        outcome.fail(f"{type(exc).__name__}: {exc}")
    finally:
        server.kill()
        if not pg.running:
            pg.start()
        outcome.seconds = time.monotonic() - start
    return outcome


# -- (f) an SSH host's sshd killed --------------------------------------------------------------


def processes_under(root: Path, *, agents_only: bool = False) -> list[tuple[int, str]]:
    """Processes of one loopback "host" (or one run's home): an argument under ``root`` (its
    node agent, started with ``--root``; with ``agents_only``, only a node agent's arguments
    count) or a working directory under it (its task processes)."""
    found = []
    prefix = str(root)
    agent = str(AGENT_PATH)

    def under(path: str) -> bool:
        return path == prefix or path.startswith(prefix + os.sep)

    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            words = [w.decode(errors="replace") for w in argv if w]
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue  # gone, or not ours to read
        by_args = (not agents_only or agent in words) and any(under(w) for w in words)
        if by_args or under(cwd):
            found.append((int(entry.name), " ".join(words)[:120]))
    return found


def running_on(sdk: SdkClient, address: str) -> int:
    """Tasks of the job running on the node at ``address``."""
    nodes = {n.id: n.ip_address for n in sdk.list_nodes("pool")}
    return sum(
        1
        for t in sdk.list_tasks("job")
        if t.state == models.BatchTaskState.RUNNING
        and t.node_info is not None
        and nodes.get(t.node_info.node_id) == address
    )


def ssh_host_loss(
    base: Path, *, tasks: int, down_seconds: float, timeout: float = WAIT_SECONDS
) -> Outcome:
    """(f) A pool of 3 SSH hosts (private sshd on 127.0.0.2-4) running a job of ledger tasks.

    Two faults, one after the other, each on a host running tasks:

    * **sshd crash** on the first: ``kill -9`` of the listening sshd and of every per-connection
      sshd (the agent's session drops at once), the agent and its tasks left running — what a
      crash or an OOM kill of sshd does. sshd is started again after ``down_seconds``.
    * **host lost** on the second: the same, plus ``kill -9`` of everything running on the host
      (its agent and its task processes) — a power loss. After ``down_seconds`` its sshd starts
      again, as a host that reboots.

    Nothing accepted may be lost, a re-run must be counted (the second host's tasks in flight
    are requeued), and both nodes must be back (idle or running) at the end: the grace for an
    unreachable node is longer than the outage, so they are reconnected, not given up.
    """
    from prefect_batch.testing.sshd import SSHServers, sshd_available

    outcome = Outcome("(f) SSH host: sshd crash, host lost")
    start = time.monotonic()
    if not sshd_available():
        outcome.fail("no /usr/sbin/sshd (openssh-server) on this machine")
        return outcome
    home, ledger = base / "f-home", base / "tasks" / "f-ledger.txt"
    files = base / "f-ssh"  # the server lets host groups name key files under <dir>/<account>/
    servers = SSHServers(files / ACCOUNT, count=3)
    hosts = base / "f-hosts"
    server = Server(
        home,
        new_key(),
        env={
            "PREFECT_BATCH_SSH_FILES_DIR": str(files),
            "PREFECT_BATCH_NODE_UNREACHABLE_GRACE_SECONDS": str(max(60.0, 6 * down_seconds)),
        },
    )
    try:
        servers.start()
        with running(server):
            group = servers.group_config(
                name="hosts",
                hosts=[s.host_config(root=str(hosts / s.address)) for s in servers],
                confineTasks=False,  # the tasks append to the run's ledger, outside the root
            )
            got = server.send("POST", "/nodesources", group)
            if got.status_code != 201:
                raise FaultError(f"the host group was refused: {got.status_code} {got.text}")
            pool = {
                "id": "pool",
                "vmSize": "ssh",
                "targetDedicatedNodes": 3,
                "taskSlotsPerNode": 2,
                "virtualMachineConfiguration": {
                    "imageReference": {
                        "publisher": "prefect-batch",
                        "offer": "ssh",
                        "sku": "hosts",
                    },
                    "nodeAgentSKUId": "batch.node.ssh.hosts",
                },
            }
            got = server.send("POST", "/pools", pool)
            if got.status_code != 201:
                raise FaultError(f"the pool was refused: {got.status_code} {got.text}")
            sdk = server.sdk()
            try:
                idle = (models.BatchNodeState.IDLE, models.BatchNodeState.RUNNING)
                wait_until(
                    lambda: sum(n.state in idle for n in sdk.list_nodes("pool")) == 3,
                    timeout,
                    "3 SSH nodes ready",
                )
                sdk.create_job(
                    models.BatchJobCreateOptions(
                        id="job", pool_info=models.BatchPoolInfo(pool_id="pool")
                    )
                )
                accepted = add_tasks(
                    sdk, [ledger_task(f"t{i:03d}", ledger, 0.8) for i in range(tasks)]
                )
                faults = [("sshd crash", False), ("host lost", True)]
                hit: list[str] = []
                for label, whole_host in faults:
                    victim = wait_until(
                        lambda: next(
                            (
                                s
                                for s in servers
                                if s.address not in hit and running_on(sdk, s.address) >= 1
                            ),
                            None,
                        ),
                        timeout,
                        f"a host running tasks ({label})",
                    )
                    hit.append(victim.address)
                    key = "crash" if not whole_host else "lost"
                    outcome.notes[f"{key}_running"] = running_on(sdk, victim.address)
                    victim.kill()  # the listener and every session: the connection drops
                    if whole_host:
                        for pid, _ in processes_under(hosts / victim.address):
                            try:
                                os.kill(pid, signal.SIGKILL)
                            except ProcessLookupError:
                                pass
                    time.sleep(down_seconds)
                    victim.start()
                wait_completed(sdk, len(accepted), timeout)
                judge(outcome, sdk, accepted, ledger)
                back = wait_until(
                    lambda: (
                        (
                            states := Counter(
                                str(getattr(n.state, "value", n.state))
                                for n in sdk.list_nodes("pool")
                            )
                        )
                        and sum(states[s] for s in ("idle", "running")) == 3
                        and states
                    ),
                    timeout,
                    "the 3 nodes back",
                )
                outcome.notes["nodes"] = ",".join(f"{k}:{v}" for k, v in sorted(back.items()))
            finally:
                sdk.close()
        check_orphans(outcome, hosts, processes_under, "on the hosts after the shutdown")
    except Exception as exc:  # noqa: BLE001 - any error fails this scenario, not the suite
        outcome.fail(f"{type(exc).__name__}: {exc}")
    finally:
        server.kill()
        servers.close()
        for pid, _ in processes_under(hosts):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        outcome.seconds = time.monotonic() - start
    return outcome


# -- the suite ---------------------------------------------------------------------------------


@dataclass
class Plan:
    rounds: int = 20
    tasks_per_round: int = 20
    agent_tasks: int = 40
    twin_tasks: int = 60
    outage_tasks: int = 60
    outage_seconds: float = 10.0
    ssh_tasks: int = 60
    ssh_down_seconds: float = 5.0
    seed: int = 16
    only: str = "abcdef"
    timeout: float = WAIT_SECONDS


QUICK = {"rounds": 3, "tasks_per_round": 12, "agent_tasks": 24, "twin_tasks": 30, "ssh_tasks": 30}
QUICK_OUTAGE = {"outage_tasks": 30, "outage_seconds": 4.0, "ssh_down_seconds": 3.0}


def run(plan: Plan, base: Path) -> list[Outcome]:
    """Run the scenarios of ``plan`` under ``base``, printing each one's counts."""
    outcomes: list[Outcome] = []

    def one(title: str, call: Callable[[], Outcome]) -> None:
        print(f"{title} ...", flush=True)
        outcome = call()
        report(outcome)
        outcomes.append(outcome)

    if "a" in plan.only:
        one(
            f"(a) kill -9 of the server mid-job, {plan.rounds} rounds",
            lambda: server_kills(
                base,
                rounds=plan.rounds,
                per_round=plan.tasks_per_round,
                seed=plan.seed,
                timeout=plan.timeout,
            ),
        )
    if "b" in plan.only:
        one(
            "(b) kill -9 of one node agent mid-job",
            lambda: agent_kill(base, tasks=plan.agent_tasks, timeout=plan.timeout),
        )
    if "e" in plan.only:
        one(
            "(e) two servers on one SQLite home, the lease holder killed",
            lambda: twin_failover(base, None, tasks=plan.twin_tasks, timeout=plan.timeout),
        )
    if "f" in plan.only:
        one(
            "(f) an SSH host's sshd killed mid-job, then a host lost whole",
            lambda: ssh_host_loss(
                base,
                tasks=plan.ssh_tasks,
                down_seconds=plan.ssh_down_seconds,
                timeout=plan.timeout,
            ),
        )
    if "c" in plan.only or "d" in plan.only:
        pg = PrivatePostgres()
        try:
            pg.start()
            if "c" in plan.only:
                one(
                    "(c) two servers on one PostgreSQL database, the lease holder killed",
                    lambda: twin_failover(base, pg, tasks=plan.twin_tasks, timeout=plan.timeout),
                )
            if "d" in plan.only:
                one(
                    f"(d) the store unreachable for {plan.outage_seconds:.0f} s",
                    lambda: store_outage(
                        base,
                        pg,
                        tasks=plan.outage_tasks,
                        outage_seconds=plan.outage_seconds,
                        timeout=plan.timeout,
                    ),
                )
        finally:
            pg.close()
    return outcomes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=None, help="(a) server kills (default 20)")
    ap.add_argument("--tasks-per-round", type=int, default=None)
    ap.add_argument("--agent-tasks", type=int, default=None, help="(b) tasks")
    ap.add_argument("--twin-tasks", type=int, default=None, help="(c) tasks")
    ap.add_argument("--outage-tasks", type=int, default=None, help="(d) tasks")
    ap.add_argument("--outage-seconds", type=float, default=None, help="(d) default 10")
    ap.add_argument("--ssh-tasks", type=int, default=None, help="(f) tasks")
    ap.add_argument("--ssh-down-seconds", type=float, default=None, help="(f) default 5")
    ap.add_argument("--only", default="abcdef", help="scenarios to run, e.g. 'ab'")
    ap.add_argument("--seed", type=int, default=16, help="kill moments (a)")
    ap.add_argument("--timeout", type=float, default=WAIT_SECONDS, help="bound of each wait")
    ap.add_argument("--quick", action="store_true", help="CI sizes: 3 rounds, a 4 s outage")
    args = ap.parse_args(argv)
    if set(args.only) - set("abcdef") or not args.only:
        ap.error(f"--only takes letters of 'abcdef', not {args.only!r}")
    for name in (
        "rounds",
        "tasks_per_round",
        "agent_tasks",
        "twin_tasks",
        "outage_tasks",
        "ssh_tasks",
    ):
        value = getattr(args, name)
        if value is not None and not 1 <= value <= 10_000:
            ap.error(f"--{name.replace('_', '-')} must be between 1 and 10000, not {value}")
    if args.outage_seconds is not None and not 0 < args.outage_seconds <= 300:
        ap.error("--outage-seconds must be in (0, 300]")
    if args.ssh_down_seconds is not None and not 0 < args.ssh_down_seconds <= 300:
        ap.error("--ssh-down-seconds must be in (0, 300]")
    if not 1 <= args.timeout <= 3600:
        ap.error("--timeout must be between 1 and 3600 seconds")
    values: dict[str, Any] = {**QUICK, **QUICK_OUTAGE} if args.quick else {}
    for name in (
        "rounds",
        "tasks_per_round",
        "agent_tasks",
        "twin_tasks",
        "outage_tasks",
        "outage_seconds",
        "ssh_tasks",
        "ssh_down_seconds",
    ):
        if getattr(args, name) is not None:
            values[name] = getattr(args, name)
    plan = Plan(**values, seed=args.seed, only=args.only, timeout=args.timeout)
    print(
        f"fault suite {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {os.cpu_count()} CPUs, "
        f"python {sys.version.split()[0]}; {plan}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="prefect-batch-faults-") as tmp:
        outcomes = run(plan, Path(tmp))
    print()
    print(HEADER)
    for outcome in outcomes:
        print(outcome.line())
    failed = [o.name for o in outcomes if not o.ok]
    print(
        "\nresult:",
        "FAILED " + ", ".join(failed) if failed else "no task lost, no re-run uncounted",
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
