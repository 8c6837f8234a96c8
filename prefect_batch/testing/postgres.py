"""A private, throw-away PostgreSQL cluster on loopback, for tests and benchmarks that stop it.

:class:`PrivatePostgres` runs ``initdb`` in a temporary directory of its own, then starts the
cluster with ``pg_ctl`` on ``127.0.0.1`` and a free port (its Unix socket in that directory,
password authentication for one superuser, ``fsync`` off: nothing in it is meant to outlive the
run). It can be stopped and started again on the same port and data — the store of a service
becoming unreachable and coming back — and is removed by :meth:`PrivatePostgres.close`.

Only the cluster it created is ever stopped: it never touches the machine's own clusters
(``pg_lsclusters``), their configuration or their ports. As root (``initdb`` refuses to run as
root) it runs PostgreSQL's programs as the ``postgres`` user with ``runuser``, and gives that
user its directory. The programs are Debian's (``/usr/lib/postgresql/<version>/bin``), or found
on ``PATH``.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["PrivatePostgres", "postgres_bin_dir", "private_postgres"]

START_TIMEOUT_SECONDS = 60
USER = "prefect_batch"


def postgres_bin_dir() -> Path | None:
    """The directory of ``initdb`` and ``pg_ctl`` (Debian's newest version first), or None."""
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted(
            (p for p in debian.iterdir() if (p / "bin" / "initdb").exists()),
            key=lambda p: [int(x) if x.isdigit() else 0 for x in p.name.split(".")],
        )
        if versions:
            return versions[-1] / "bin"
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivatePostgres:
    """A PostgreSQL cluster of this process's own, in a new temporary directory.

    Raises:
        RuntimeError: PostgreSQL's programs are not installed, or the cluster did not start.
    """

    def __init__(self) -> None:
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise RuntimeError(
                "PostgreSQL's initdb is not installed (Debian: apt install postgresql)"
            )
        self.bin_dir = bin_dir
        self.port = _free_port()
        self.password = secrets.token_hex(16)
        self.root = Path(tempfile.mkdtemp(prefix="prefect-batch-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self._as_postgres = os.geteuid() == 0
        self.running = False
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            USER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-sync",
        )
        pwfile.unlink()

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the cluster's ``postgres`` database."""
        return f"postgresql+psycopg://{USER}:{self.password}@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str) -> str:
        """Create the database ``name`` (letters, digits, ``_``) and return its URL."""
        if not name.replace("_", "").isalnum() or not name.isascii():
            raise ValueError(f"not a plain database name: {name!r}")
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()
        return make_url(self.url).set(database=name).render_as_string(hide_password=False)

    def _run(self, program: str, *args: str) -> None:
        cmd = [str(self.bin_dir / program), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(
            cmd, capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS + 30, check=False
        )
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{program} failed ({done.returncode}): {done.stderr.strip()[-2000:]}\n{log}"
            )

    def start(self) -> None:
        """Start the cluster (again) on its port; return once it accepts connections."""
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            options,
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "start",
        )
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the cluster (``fast``: connections dropped at once; ``immediate``: no checkpoint,
        as a crash)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown pg_ctl stop mode: {mode!r}")
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
        self.running = False

    def close(self) -> None:
        """Stop the cluster if it runs, and remove its directory."""
        try:
            if self.running:
                self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """A started :class:`PrivatePostgres`, stopped and removed afterwards."""
    pg = PrivatePostgres()
    try:
        pg.start()
        yield pg
    finally:
        pg.close()
