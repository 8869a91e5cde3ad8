"""Versioned migrations of the gateway store: SQLite files and PostgreSQL databases (a real throwaway cluster)."""

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


def test_postgres_database_of_version_1_is_migrated(pg_dsn: str) -> None:
    """A fleet database as the previous gateway version left it (v1: no registry tables, HTTP rows stored): the
    next gateway to open it adds v2 (the shared registry) once and the HTTP books go on where they were."""
    import psycopg

    from gateway.store.migrations import POSTGRES_MIGRATIONS, apply_postgres
    from gateway.store.postgres import PostgresStore
    from gateway.store.postgres_registry import PostgresRegistry

    with psycopg.connect(pg_dsn, autocommit=True) as c:
        assert apply_postgres(c, POSTGRES_MIGRATIONS[:1]) == 1
        c.execute("INSERT INTO http_ingest VALUES ('M-1', 7, 'r7', 1000, 1500, 0, 91500, 250, '', 5000)")
        c.execute("INSERT INTO http_meters VALUES ('M-1', 7, 5000)")
        store, registry = PostgresStore(pg_dsn), PostgresRegistry(pg_dsn)
        try:
            assert [r[0] for r in c.execute("SELECT version FROM schema_migrations ORDER BY 1")] == [1, 2]
            assert registry.data_version() == (0, 0) and registry.all() == []
            assert store.add_http_reading("M-1", 2000, 1, 2, b"{}", "r8", 6000, checked_last_ms=1000) == \
                ("stored", None)
            assert c.execute("SELECT seq, cum_import_mwh, cum_export_mwh FROM http_ingest WHERE reading_id = 'r8'"
                             ).fetchone() == (8, 91501, 252)
        finally:
            store.close()
            registry.close()


def test_postgres_newer_schema_is_refused(pg_dsn: str) -> None:
    import psycopg

    from gateway.store.postgres import PostgresStore
    from gateway.store.postgres_registry import PostgresRegistry

    PostgresStore(pg_dsn).close()
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("INSERT INTO schema_migrations (version) VALUES (99)")
    for opener in (PostgresStore, PostgresRegistry):
        with pytest.raises(SchemaTooNew, match="schema version 99 is newer than this gateway's 2"):
            opener(pg_dsn)
