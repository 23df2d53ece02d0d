"""A throw-away PostgreSQL server from Debian's ``postgresql`` package, in a temporary folder.

For tests and ``make cluster``: ``initdb`` (as the ``postgres`` user when run as root, since
initdb refuses root), ``pg_ctl start`` on a free loopback port, ``stop`` removes everything.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from devkit.processes import free_port


class PostgresMissing(RuntimeError):
    """Debian's postgresql package is not installed."""


def binaries() -> Path:
    """The folder with ``initdb`` and ``pg_ctl`` (the newest installed version).

    Raises:
        PostgresMissing: no PostgreSQL server is installed.
    """
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    if not found:
        raise PostgresMissing("PostgreSQL is not installed: apt-get install postgresql")
    return found[-1].parent


class TemporaryPostgres:
    """``with TemporaryPostgres() as server: server.url("name")``."""

    def __init__(self):
        self.bin_dir = binaries()
        self.folder = Path(tempfile.mkdtemp(prefix="imgclf-postgres-"))
        self.port = free_port()
        self.as_postgres = os.geteuid() == 0
        self._names = itertools.count(1)

    def _run(self, command: str) -> None:
        argv = ["su", "postgres", "-c", command] if self.as_postgres else ["sh", "-c", command]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def start(self) -> TemporaryPostgres:
        if self.as_postgres:
            shutil.chown(self.folder, "postgres")
        self._run(f"{self.bin_dir}/initdb -D {self.folder / 'data'} -A trust -U postgres")
        self.resume()
        return self

    def pause(self) -> None:
        """Stop the server (an outage: clients get "connection refused"); data and port kept."""
        self._run(f"{self.bin_dir}/pg_ctl -D {self.folder / 'data'} -m fast -w stop")

    def resume(self) -> None:
        """Start the server on its port (again, after ``pause``)."""
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        data, log = self.folder / "data", self.folder / "log"
        self._run(f"{self.bin_dir}/pg_ctl -D {data} -o '{options}' -l {log} -w start")

    def create_database(self, name: str | None = None) -> str:
        """Create a database (by default one with a name this server has not used); returns its
        SQLAlchemy URL."""
        import psycopg

        name = name or f"db_{next(self._names)}"
        dsn = f"host=127.0.0.1 port={self.port} user=postgres"
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        try:
            self._run(f"{self.bin_dir}/pg_ctl -D {self.folder / 'data'} -m fast stop")
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(self, *_) -> None:
        self.stop()
