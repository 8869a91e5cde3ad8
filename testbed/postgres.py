"""A throwaway PostgreSQL cluster on a free 127.0.0.1 port, for tests and benches (Debian's postgresql-15).

initdb and pg_ctl refuse to run as root; when this process is root they run as the `postgres` user the
package creates, in a directory that user owns. fsync is off: a test cluster is thrown away, durability
across a power cut is not what it measures.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from testbed.ports import free_port

DB_USER = "gridmeter"


def pg_bin_dir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise FileNotFoundError("PostgreSQL server not installed: run scripts/bootstrap (it installs postgresql)")
    return Path(found[-1]).parent


@dataclass
class PgCluster:
    port: int = 0
    workdir: Path | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = [str(a) for a in args]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr[-2000:]}")

    def start(self) -> PgCluster:
        self._tmp = tempfile.TemporaryDirectory(prefix="gridmeter-pg-")
        self.workdir = Path(self._tmp.name)
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        self.port = self.port or free_port()
        b = pg_bin_dir()
        self._run(str(b / "initdb"), "-D", f"{self.workdir}/data", "-A", "trust", "-U", DB_USER)
        self.start_server()
        return self

    def start_server(self) -> None:
        """Start the server on its data directory (again, after stop_server: same port, same data)."""
        self._run(str(pg_bin_dir() / "pg_ctl"), "-D", f"{self.workdir}/data", "-o",
                  f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                  "-c max_connections=200", "-l", f"{self.workdir}/log", "-w", "start")

    def stop_server(self) -> None:
        """Stop the server, keeping its data (as a restart or a failover does to the gateways' sessions)."""
        self._run(str(pg_bin_dir() / "pg_ctl"), "-D", f"{self.workdir}/data", "-m", "fast", "-w", "stop")

    def create_database(self, name: str) -> str:
        """A new, empty database in this cluster (one per test: no state shared between tests); its DSN."""
        with psycopg.connect(self.dsn, autocommit=True) as c:
            c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.workdir is not None and (self.workdir / "data" / "postmaster.pid").exists():
            self._run(str(pg_bin_dir() / "pg_ctl"), "-D", f"{self.workdir}/data", "-m", "immediate", "-w", "stop")
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> PgCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
