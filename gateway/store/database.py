"""SQLite connections for the gateway's durable state (registry, readings, outbox).

WAL lets the dashboard and CLI read while the intake writes; synchronous=FULL makes a commit durable
before the gateway acks a reading to the agent (an ack lets the agent delete its copy, so a commit lost
to a power cut would lose data). busy_timeout covers the short overlaps between the intake, the
submitter and CLI commands writing the same file.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

DEFAULT_BUSY_TIMEOUT_MS = 10_000  # a CLI `meters add` may wait for an intake batch commit (ms-scale)


def connect(path: str | Path, *, readonly: bool = False) -> sqlite3.Connection:
    p = Path(path)
    if not readonly:
        p.parent.mkdir(parents=True, exist_ok=True)
    # The path goes into a URI: '#', '?' and '%' in a directory name must not end or alter it.
    uri = f"file:{quote(str(p))}" + ("?mode=ro" if readonly else "")
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout={DEFAULT_BUSY_TIMEOUT_MS}")
    if not readonly:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Transaction:
    """`with Transaction(conn):` = BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, *_: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")
