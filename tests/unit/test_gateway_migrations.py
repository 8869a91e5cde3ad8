"""Versioned migrations of the SQLite gateway store (PostgreSQL's: tests/system/test_gateway_fleet_postgres.py)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from gateway.store.migrations import SchemaTooNew
from gateway.store.sqlite import SQLITE_MIGRATIONS, Store


def test_new_database_gets_the_latest_version(tmp_path: Path) -> None:
    Store(tmp_path / "g.sqlite").close()
    c = sqlite3.connect(tmp_path / "g.sqlite")
    assert c.execute("PRAGMA user_version").fetchone()[0] == max(v for v, _ in SQLITE_MIGRATIONS) == 1
    assert c.execute("SELECT COUNT(*) FROM outbox_pruned").fetchone()[0] == 0


def test_database_of_an_unnumbered_version_is_migrated(tmp_path: Path) -> None:
    """A database from before numbered migrations: rejections without payload_len/payload_sha256, no
    http_meters rows for its http_ingest rows, no outbox_pruned."""
    c = sqlite3.connect(tmp_path / "g.sqlite")
    c.execute("CREATE TABLE rejections (id INTEGER PRIMARY KEY AUTOINCREMENT, received_at_ms INTEGER NOT NULL, "
              "source TEXT NOT NULL, topic_meter_id TEXT, meter_id TEXT, seq INTEGER, reason TEXT NOT NULL, "
              "detail TEXT NOT NULL, authenticated INTEGER NOT NULL, payload BLOB NOT NULL, signature BLOB NOT NULL)")
    c.execute("CREATE TABLE http_ingest (meter_id TEXT NOT NULL, seq INTEGER NOT NULL, reading_id TEXT NOT NULL UNIQUE,"
              " timestamp_ms INTEGER NOT NULL, import_mwh INTEGER NOT NULL, export_mwh INTEGER NOT NULL, "
              "cum_import_mwh INTEGER NOT NULL, cum_export_mwh INTEGER NOT NULL, body BLOB NOT NULL, "
              "received_at_ms INTEGER NOT NULL, "
              "PRIMARY KEY (meter_id, seq), UNIQUE (meter_id, timestamp_ms)) WITHOUT ROWID")
    c.execute("INSERT INTO http_ingest VALUES ('M-1', 7, 'r7', 1000, 1, 0, 1, 0, x'', 5000)")
    c.commit()
    c.close()
    s = Store(tmp_path / "g.sqlite")
    assert {r[1] for r in s.conn.execute("PRAGMA table_info(rejections)")} >= {"payload_len", "payload_sha256"}
    assert s.conn.execute("SELECT * FROM http_meters").fetchall() == [("M-1", 7, 5000)]
    assert s.conn.execute("PRAGMA user_version").fetchone()[0] == 1
    s.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    Store(tmp_path / "g.sqlite").close()
    c = sqlite3.connect(tmp_path / "g.sqlite")
    c.execute("PRAGMA user_version = 99")
    c.close()
    with pytest.raises(SchemaTooNew, match="schema version 99 is newer than this gateway's 1"):
        Store(tmp_path / "g.sqlite")
