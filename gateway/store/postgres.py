"""The gateway store on PostgreSQL: several gateway hosts on one share group, one database (issue 11).

Driver: psycopg 3 (sync). The store's callers (the intake thread, the submitter) are synchronous code that
already runs in its own thread or between awaits, exactly as with sqlite3; psycopg 3's sync connection is a
drop-in for that shape, while asyncpg is asyncio-only and would need a second event loop in the intake thread.
psycopg also speaks plain libpq (DSN, TLS, .pgpass, target_session_attrs for a primary behind HA).

Same semantics as gateway.store.Store (gateway/store/api.py), the same SQL except where the dialects differ:
- per-meter serialization across hosts: an intake transaction takes a transaction-scoped advisory lock per
  meter (`pg_advisory_xact_lock`, in sorted order: no deadlock) before it reads the meters' progress, so two
  gateways deciding batches of one meter run one after the other; monotonicity, gaps, late readings and acks
  are decided on what the other committed;
- exactly one active submitter: `SubmitterLease`, a session advisory lock held by the submitter's own
  connection. It is released by the server when that session ends (process killed, host gone: at once for a
  closed socket, after the TCP keepalive for a vanished host), and a standby gateway takes it on its next try;
- the GridTokenX HTTP ingest: `add_http_reading` (Store's SQL) takes the same per-meter advisory lock first, so
  two gateways receiving posts of one meter decide duplicates, order and running mWh sums one after the other;
  the meter registry is in the same database (gateway.store.postgres_registry);
- versioned schema migrations (gateway/store/migrations.py), applied under an advisory lock at start;
- the read-only views of the dashboard, the CLI and the status endpoints: gateway.store.fleet's, three
  statements worded for PostgreSQL (PostgresFleetViews); every gateway's dashboard shows the whole fleet.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from gateway.config import ConfigError
from gateway.store.fleet import PostgresFleetViews
from gateway.store.migrations import POSTGRES_MIGRATIONS, apply_postgres
from gateway.store.notices import NOTIFY_SQL
from gateway.store.outbox import OutboxSource
from gateway.store.records import MeterPlan, Planned, PlanState, Progress
from gateway.store.sqlite import BatchWrite, Store

log = logging.getLogger(__name__)

SUBMITTER_LOCK = 0x6772_6964_6D74_7231  # "gridmtr1": the advisory lock key of the active submitter
_QMARK = re.compile(r"\?")
# libpq options for every store and registry connection, unless the DSN sets them: a dead peer is noticed in
# about 11 s idle (keepalives), 15 s with data unacknowledged (tcp_user_timeout), 5 s to connect.
_LIVENESS = {"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
             "keepalives_count": 3, "tcp_user_timeout": 15_000}


def _meter_lock_key(meter_id: str) -> int:
    """A stable signed 64-bit key per meter (the same on every host and Python version)."""
    return int.from_bytes(hashlib.blake2b(meter_id.encode(), digest_size=8).digest(), "big", signed=True)


class PgConnection:
    """The slice of sqlite3.Connection the store uses, over psycopg: qmark parameters become %s, SQLite's
    `BEGIN IMMEDIATE` a plain BEGIN (the advisory locks give the serialization), in autocommit mode so a
    statement outside a transaction commits at once, as sqlite3 with isolation_level=None does.

    A lost connection (server restarted, failover to the standby, idle connection cut) is opened again, never
    inside a transaction: the statement that met the loss fails (its transaction's work is gone, nothing was
    acked), and the next transaction or statement runs on a new connection. A BEGIN, or a SELECT outside a
    transaction, that met the loss is run again at once on the new connection: nothing was done on the old one.
    Keepalives (unless the DSN sets its own) notice a vanished host within seconds instead of TCP's minutes."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        given = conninfo_to_dict(dsn)
        self._options = {k: v for k, v in _LIVENESS.items() if k not in given}
        self.in_transaction = False
        self.raw = self._connect()

    def _connect(self) -> psycopg.Connection[Any]:
        return psycopg.connect(make_conninfo(self.dsn, **self._options), autocommit=True)

    @staticmethod
    def _sql(sql: str) -> str:
        return "BEGIN" if sql == "BEGIN IMMEDIATE" else _QMARK.sub("%s", sql)

    def _usable(self, q: str) -> psycopg.Connection[Any]:
        if self.raw.closed and (not self.in_transaction or q == "ROLLBACK"):
            log.warning("PostgreSQL connection lost: connecting again")
            self.raw, self.in_transaction = self._connect(), False
        return self.raw

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        q, args = self._sql(sql), tuple(params) or None
        try:
            cur = self._usable(q).execute(q, args)  # type: ignore[arg-type]
        except psycopg.OperationalError:
            if not (self.raw.closed and (q == "BEGIN" or (not self.in_transaction and q.startswith("SELECT")))):
                raise
            cur = self._usable(q).execute(q, args)  # type: ignore[arg-type]
        if q == "BEGIN":
            self.in_transaction = True
        elif q in ("COMMIT", "ROLLBACK"):
            self.in_transaction = False
        return cur

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor[Any]:
        q = self._sql(sql)
        cur = self._usable(q).cursor()
        cur.executemany(q, list(rows))  # type: ignore[arg-type]
        return cur

    def close(self) -> None:
        self.raw.close()


def open_pg(dsn: str) -> PgConnection:
    """A connection to the fleet's database, its schema migrated to this gateway's version."""
    try:
        pg = PgConnection(dsn)
    except psycopg.OperationalError as exc:  # one line naming the key (gateway.cli), never a traceback
        raise ConfigError("gateway.postgres_dsn", f"cannot connect to PostgreSQL: {str(exc).strip()}") from None
    try:
        apply_postgres(pg.raw, POSTGRES_MIGRATIONS)
    except BaseException:
        pg.close()
        raise
    return pg


class PostgresStore(PostgresFleetViews, Store):
    """gateway.store.Store's methods over PostgreSQL; the ones whose SQL differs are overridden here (the read
    views' in gateway.store.fleet.PostgresFleetViews)."""

    def __init__(self, dsn: str) -> None:  # Store.__init__ opens SQLite: not called
        self.dsn = dsn
        self.conn = open_pg(dsn)  # type: ignore[assignment]

    def lock_meter(self, meter_id: str) -> None:
        """Within the caller's transaction: held until its COMMIT or ROLLBACK, on every host's connection."""
        self.conn.execute("SELECT pg_advisory_xact_lock(?)", (_meter_lock_key(meter_id),))

    def lock_meters(self, meter_ids: Iterable[str]) -> None:
        """lock_meter for several meters in ONE statement (a round trip per meter made a 200-meter group wait 200
        round trips, holding the earlier locks meanwhile), in ascending key order on every host: two
        transactions sharing meters never wait for each other in a cycle."""
        keys = sorted({_meter_lock_key(m) for m in meter_ids})
        self.conn.execute("SELECT COUNT(pg_advisory_xact_lock(k)) FROM (SELECT k FROM unnest(?::bigint[]) AS k "
                          "ORDER BY k) s", (keys,))

    def insert_http(self, c: Any, row: tuple[object, ...]) -> None:
        """Both rows in one statement: one round trip to the server instead of two."""
        c.execute("WITH ins AS (INSERT INTO http_ingest VALUES (?,?,?,?,?,?,?,?,?,?) RETURNING meter_id, seq, "
                  "received_at_ms) INSERT INTO http_meters SELECT * FROM ins ON CONFLICT (meter_id) DO UPDATE SET "
                  "last_seq = excluded.last_seq, last_received_ms = excluded.last_received_ms", row)

    def write_batch(self, w: BatchWrite) -> None:
        super().write_batch(w)
        if w.readings:  # delivered at COMMIT: wakes the active submitter, on whichever host (gateway/store/notices.py)
            self.conn.execute(NOTIFY_SQL)

    def load_progress(self, meter_ids: Iterable[str]) -> dict[str, Progress]:
        ids = sorted(set(meter_ids))
        self.lock_meters(ids)
        return super().load_progress(ids)

    def set_setting(self, name: str, value: str) -> None:
        self.conn.execute("INSERT INTO settings VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                          (name, value))

    def save_plan(self, meter_id: str, state: PlanState, planned: Sequence[Planned], zone_id: int,
                  now_ms: int) -> None:
        with self.transaction() as c:
            _upsert_plan(c, "plan_state", meter_id, state)
            self.add_planned(c, OutboxSource.MQTT, planned, zone_id, now_ms)  # type: ignore[arg-type]

    def save_plans(self, plans: Sequence[MeterPlan], now_ms: int) -> None:
        sets = ", ".join(f"{col} = excluded.{col}" for col in _PLAN_COLS[1:])
        with self.transaction() as c:
            c.executemany(f"INSERT INTO plan_state VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (meter_id) DO UPDATE SET "
                          f"{sets}", [(p.meter_id, int(p.state.baseline_set), p.state.last_seq,
                                       p.state.anchor_read_at_ms, p.state.sub_import_wh, p.state.sub_export_wh,
                                       p.state.last_import_wh, p.state.last_export_wh, p.state.last_read_at_ms,
                                       p.state.last_ts) for p in plans])
            for p in plans:
                if p.planned:
                    self.add_planned(c, OutboxSource.MQTT, p.planned, p.zone_id, now_ms)  # type: ignore[arg-type]

    def save_http_plan(self, meter_id: str, state: PlanState, planned: Sequence[Planned], zone_id: int,
                       now_ms: int) -> None:
        with self.transaction() as c:
            _upsert_plan(c, "http_plan_state", meter_id, state)
            self.add_planned(c, OutboxSource.HTTP, planned, zone_id, now_ms)  # type: ignore[arg-type]


_PLAN_COLS = ("meter_id", "baseline_set", "last_seq", "anchor_read_at_ms", "sub_import_wh", "sub_export_wh",
              "last_import_wh", "last_export_wh", "last_read_at_ms", "last_ts")


def _upsert_plan(c: Any, table: str, meter_id: str, s: PlanState) -> None:
    sets = ", ".join(f"{col} = excluded.{col}" for col in _PLAN_COLS[1:])
    c.execute(f"INSERT INTO {table} VALUES (?,?,?,?,?,?,?,?,?,?) ON CONFLICT (meter_id) DO UPDATE SET {sets}",
              (meter_id, int(s.baseline_set), s.last_seq, s.anchor_read_at_ms, s.sub_import_wh, s.sub_export_wh,
               s.last_import_wh, s.last_export_wh, s.last_read_at_ms, s.last_ts))


class SubmitterLease:
    """Exactly one active submitter per database: a session advisory lock on a connection of its own.
    `held()` is asked before every submitter cycle: True while this gateway holds the lock (taking it when
    free); False on a standby gateway, or when the connection broke (the server has then released the lock,
    and it is taken again on a later try, by this or another gateway)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn: psycopg.Connection[Any] | None = None
        self.holding = False

    def held(self) -> bool:
        try:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5,
                                             keepalives=1, keepalives_idle=5, keepalives_interval=2,
                                             keepalives_count=3)
                self.holding = False
            if self.holding:
                self._conn.execute("SELECT 1")  # the session (and its lock) is alive
            else:
                row = self._conn.execute("SELECT pg_try_advisory_lock(%s)", (SUBMITTER_LOCK,)).fetchone()
                self.holding = bool(row and row[0])
                if self.holding:
                    log.info("submitter lease taken: this gateway submits")
        except psycopg.Error as exc:
            log.warning("submitter lease: %s", exc)
            self.close()
        return self.holding

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn, self.holding = None, False

