"""The meter registry of a fleet, in its PostgreSQL database: one registry for every gateway (issue 11).

Same interface, rules and audit log (registry_log) as gateway.registry.Registry, whose SQL it runs over the
store's PostgreSQL connection (gateway.store.postgres.PgConnection). What differs:
- registry writes (`add`, `set_status`, from any host's CLI) run one at a time under a transaction-scoped
  advisory lock, so two hosts registering or retiring the same meter decide on what the other committed;
- every write bumps the one row of registry_version in its own transaction; `data_version` reads it (at most
  once per `reload_s`), and the MQTT intake reloads its snapshot of the meters when it moved. A suspend or
  retire on one host is therefore refused by every other gateway's MQTT intake within reload_s (plus the
  batch in flight), and at once by the HTTP ingest and the submitter, which read the meter on every use.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from gateway.registry import Registry
from gateway.store.database import Transaction
from gateway.store.postgres import open_pg

REGISTRY_LOCK = 0x6772_6964_6D74_7232  # "gridmtr2": the advisory lock of registry writes
DEFAULT_REGISTRY_RELOAD_S = 1.0  # how stale another host's registry change may be in a gateway's MQTT intake


class PostgresRegistry(Registry):
    def __init__(self, dsn: str, *, reload_s: float = DEFAULT_REGISTRY_RELOAD_S,
                 clock: Callable[[], float] = time.monotonic) -> None:  # Registry.__init__ opens SQLite: not called
        self.conn = open_pg(dsn)  # type: ignore[assignment]
        self._writes = 0
        self.reload_s, self._clock = reload_s, clock
        self._version: int | None = None
        self._read_at = 0.0

    def data_version(self) -> tuple[int, int]:
        """(registry_version as last read, this connection's writes): re-read once reload_s has passed."""
        now = self._clock()
        if self._version is None or now - self._read_at >= self.reload_s:
            self._version = int(self.conn.execute("SELECT version FROM registry_version").fetchone()[0])
            self._read_at = now
        return self._version, self._writes

    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        with Transaction(self.conn) as c:
            c.execute("SELECT pg_advisory_xact_lock(?)", (REGISTRY_LOCK,))
            yield c

    def _log(self, meter_id: str, action: str, detail: str, now_ms: int) -> None:
        super()._log(meter_id, action, detail, now_ms)
        self.conn.execute("UPDATE registry_version SET version = version + 1")
