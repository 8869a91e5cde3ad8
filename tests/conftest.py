"""Shared fixtures. Binaries (mosquitto, socat, clang-14, chromium) are installed by scripts/test,
never skipped: a missing binary is a failing test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.broker import Broker
from testbed.postgres import PgCluster

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto on a free 127.0.0.1 port, anonymous, max_queued_messages raised."""
    b = Broker(workdir=tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster (initdb, free port) for the session's store tests; stopped at the end."""
    with PgCluster() as c:
        yield c


@pytest.fixture
def pg_dsn(pg_cluster: PgCluster) -> str:
    """A fresh, empty database of that cluster for one test."""
    _PG_DATABASES[0] += 1
    return pg_cluster.create_database(f"test_{_PG_DATABASES[0]}")


_PG_DATABASES = [0]
ARTIFACTS = REPO / "tests" / "artifacts"  # screenshots and figures for a reviewer (ignored by git)
_SESSION_START = [0.0]


def pytest_sessionstart(session: pytest.Session) -> None:
    import time

    _SESSION_START[0] = time.time() - 1


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Lists the artifacts this run wrote (screenshots of the dashboard tests, measured figures)."""
    written = sorted(p for p in ARTIFACTS.rglob("*") if p.is_file() and p.stat().st_mtime >= _SESSION_START[0]) \
        if ARTIFACTS.exists() else []
    if written:
        terminalreporter.write_sep("-", f"artifacts for review under {ARTIFACTS}")
        for p in written:
            terminalreporter.write_line(f"  {p.relative_to(REPO)}")
