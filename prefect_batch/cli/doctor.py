"""``prefect-batch doctor``: check this machine and the current settings, one line per check.

Each check says ``ok``, ``warn`` or ``fail`` with a short detail: Python and platform; whether
tasks on local nodes are confined for a server and for an embedded client (and why not), and
the kernel's Landlock ABI; the home's mode (0700 expected) and, for a SQLite store that exists,
the database file's and its journals' modes (0600); whether the store answers a ``SELECT 1``
within a few seconds (a URL is shown with its password hidden); the node root's free disk.
``--json`` prints ``{"ok": ..., "checks": [{"name", "status", "detail"}...]}``. The exit code
is 0 when no check failed, 1 otherwise.

What it does not do: change anything. It creates no home, no store and no node root (a store
not created yet is reported, not made), and it fixes no mode (``server start`` does).
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import stat
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import typer

from prefect_batch.cli._common import JsonOption, print_json
from prefect_batch.settings import BatchSettings, get_settings

__all__ = ["Check", "doctor", "run_checks"]

OK, WARN, FAIL = "ok", "warn", "fail"

STORE_TIMEOUT_SECONDS = 3
"""How long the store probe waits to connect (PostgreSQL) or for a lock (SQLite)."""

_LOW_DISK_BYTES = 1 << 30  # warn below 1 GiB free
_NO_DISK_BYTES = 100 << 20  # fail below 100 MiB free


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    name: str
    status: str  # ok | warn | fail
    detail: str


def run_checks(settings: BatchSettings) -> list[Check]:
    """Every check, in the order printed, for ``settings``."""
    checks = [_python(), *_confinement(settings), _home(settings.home)]
    checks += _store(settings)
    checks.append(_disk(settings.effective_node_root))
    return checks


def _python() -> Check:
    impl = f"{platform.python_implementation()} {platform.python_version()}"
    return Check("python", OK, f"{impl} on {platform.platform()} ({sys.platform})")


def _confinement(settings: BatchSettings) -> list[Check]:
    from prefect_batch.service.engine import confinement

    reason = confinement.confinement_unavailable()
    abi = confinement.landlock_abi() if reason is None else None
    setting = settings.confine_tasks
    checks = [
        Check("landlock", OK, f"ABI {abi}")
        if reason is None
        else Check("landlock", WARN, f"unavailable: {reason}")
    ]
    for name, server in (("confinement-server", True), ("confinement-embedded", False)):
        confined = confinement.tasks_confined(setting, server=server)
        if confined and reason is None:
            checks.append(Check(name, OK, "tasks on local nodes are confined (Landlock)"))
        elif confined:  # asked for, but this kernel cannot: the agents refuse to run tasks
            checks.append(
                Check(
                    name,
                    FAIL,
                    f"PREFECT_BATCH_CONFINE_TASKS=true but {reason}: local nodes cannot run tasks",
                )
            )
        elif setting is False:
            checks.append(
                Check(name, WARN, "tasks run unconfined: PREFECT_BATCH_CONFINE_TASKS=false")
            )
        elif server:
            checks.append(Check(name, WARN, f"tasks run unconfined: {reason}"))
        else:  # the machine's own user running its own tasks: unconfined by design
            why = reason or "PREFECT_BATCH_CONFINE_TASKS=true confines them"
            checks.append(
                Check(name, OK, f"tasks run unconfined (the default for an embedded client; {why})")
            )
    return checks


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _home(home: Path) -> Check:
    try:
        info = home.stat()
    except FileNotFoundError:
        return Check("home", WARN, f"{home} does not exist yet (server start makes it 0700)")
    except OSError as exc:
        return Check("home", FAIL, f"cannot read {home}: {exc.strerror or exc}")
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != os.geteuid():
        return Check("home", WARN, f"{home} is owned by uid {info.st_uid}, not this user")
    if mode & 0o077:
        return Check(
            "home",
            WARN,
            f"{home} is {mode:04o}, expected 0700: others may read the store, keys and node "
            f"files (chmod 700 {home}; server start does it)",
        )
    return Check("home", OK, f"{home} is {mode:04o}")


def redact_url(url: str) -> str:
    """``url`` with any password hidden, whether or not SQLAlchemy can parse it."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return re.sub(r"(://[^/:@]*):[^@/]*@", r"\1:***@", url)


def _scrub(text: str, url: str) -> str:
    """``text`` (an error message) with the URL's password, if any, replaced by ``***``."""
    from sqlalchemy.engine import make_url

    secrets = set()
    try:
        password = make_url(url).password
        if password:
            secrets.add(str(password))
    except Exception:
        pass
    found = re.search(r"://[^/:@]*:([^@/]*)@", url)
    if found and found.group(1):
        secrets.add(found.group(1))
    text = text.replace(url, redact_url(url))
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _store(settings: BatchSettings) -> list[Check]:
    from sqlalchemy.engine import make_url

    url = settings.effective_database_url
    shown = redact_url(url)
    try:
        parsed = make_url(url)
    except Exception as exc:
        return [Check("store", FAIL, f"cannot parse {shown}: {_scrub(str(exc), url)}")]
    checks: list[Check] = []
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            path = Path(database)
            if not path.exists():
                return [Check("store", WARN, f"{shown}: not created yet")]
            checks.append(_store_files(path, settings.home))
    checks.append(_probe(url, shown, parsed.get_backend_name()))
    return checks


def _store_files(path: Path, home: Path) -> Check:
    loose = []
    for suffix in ("", "-wal", "-shm"):
        file = Path(str(path) + suffix)
        try:
            mode = _mode(file)
        except FileNotFoundError:
            continue
        except OSError as exc:
            return Check("store-files", FAIL, f"cannot read {file}: {exc.strerror or exc}")
        if mode & 0o077:
            loose.append(f"{file.name} is {mode:04o}")
    if not loose:
        return Check("store-files", OK, f"{path} (and its journals) 0600")
    try:
        shut = not (_mode(path.parent) & 0o077)
    except OSError:
        shut = False
    detail = ", ".join(loose) + ", expected 0600: the file holds the account keys"
    if shut:  # its directory keeps others out for now
        return Check("store-files", WARN, f"{detail} (its directory is private)")
    return Check("store-files", FAIL, f"{detail}, and its directory lets others in")


def _probe(url: str, shown: str, backend: str) -> Check:
    """``SELECT 1`` on the store within :data:`STORE_TIMEOUT_SECONDS`, and its schema version."""
    from sqlalchemy import create_engine, inspect, select
    from sqlalchemy.pool import NullPool

    from prefect_batch.store.schema import SCHEMA_VERSION, schema_info

    if backend == "sqlite":
        connect_args: dict[str, Any] = {"timeout": STORE_TIMEOUT_SECONDS}
    elif backend == "postgresql":
        connect_args = {"connect_timeout": STORE_TIMEOUT_SECONDS}
    else:
        connect_args = {}
    try:
        engine = create_engine(url, connect_args=connect_args, poolclass=NullPool)
    except Exception as exc:
        return Check("store", FAIL, f"{shown}: {_scrub(_short(exc), url)}")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1").scalar()
            if not inspect(conn).has_table(schema_info.name):
                return Check("store", WARN, f"{shown} answers; no batch tables yet")
            found = conn.execute(select(schema_info.c.version)).scalars().all()
    except Exception as exc:
        return Check("store", FAIL, f"{shown} does not answer: {_scrub(_short(exc), url)}")
    finally:
        engine.dispose()
    if found and found != [SCHEMA_VERSION]:
        return Check(
            "store",
            FAIL,
            f"{shown} answers but was written by schema version {found[0]}; this version "
            f"uses {SCHEMA_VERSION}",
        )
    return Check("store", OK, f"{shown} answers (schema version {SCHEMA_VERSION})")


def _short(exc: BaseException) -> str:
    """The driver's own message (first line), not SQLAlchemy's wrapping with the statement."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc) or type(exc).__name__
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def _disk(root: Path) -> Check:
    where = root
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        usage = shutil.disk_usage(where)
    except OSError as exc:
        return Check("disk", FAIL, f"cannot read the free space of {where}: {exc.strerror}")
    free = usage.free
    detail = f"{_size(free)} free of {_size(usage.total)} for the node root {root}"
    if free < _NO_DISK_BYTES:
        return Check("disk", FAIL, detail)
    if free < _LOW_DISK_BYTES:
        return Check("disk", WARN, detail)
    return Check("disk", OK, detail)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def doctor(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Check the machine and the settings: confinement, modes, the store, free disk.

    One line per check (ok, warn or fail); exit code 0 when none failed, else 1.
    """
    settings = get_settings()
    root = ctx.find_root().obj
    if root is not None and root.home is not None:
        settings = settings.model_copy(update={"home": root.home})
    checks = run_checks(settings)
    failed = any(c.status == FAIL for c in checks)
    if json_out:
        print_json({"ok": not failed, "checks": [asdict(c) for c in checks]})
    else:
        width = max(len(c.name) for c in checks)
        for c in checks:
            typer.echo(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
    raise typer.Exit(1 if failed else 0)
