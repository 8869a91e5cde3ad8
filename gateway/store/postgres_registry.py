"""The meter registry of a fleet, in its PostgreSQL database: one registry for every gateway (issue 11).

Same interface, rules and audit log (registry_log) as gateway.store.registry.Registry, whose SQL it runs over the
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
from dataclasses import dataclass, field
from typing import Any

from gateway.registry import Meter
from gateway.store.database import Transaction
from gateway.store.postgres import open_pg
from gateway.store.registry import Registry
from protocol import ProtocolError, parse_registration

REGISTRY_LOCK = 0x6772_6964_6D74_7232  # "gridmtr2": the advisory lock of registry writes
DEFAULT_REGISTRY_RELOAD_S = 1.0  # how stale another host's registry change may be in a gateway's MQTT intake


@dataclass
class Imported:
    """What `import_meters` did, meter ids per outcome."""

    imported: list[str] = field(default_factory=list)  # copied, with their status
    same: list[str] = field(default_factory=list)  # already there with the same record and status
    differs: list[str] = field(default_factory=list)  # already there, another record or status: left alone
    invalid: list[str] = field(default_factory=list)  # record no longer verifies or names another key: skipped


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

    def import_meters(self, source: Registry, now_ms: int) -> Imported:
        """Moving a fleet from a registry file per host to this one: every meter of `source` (a host's
        registry.sqlite) this registry lacks is copied as it is there (record in force, status, replacement
        time), logged as `imported`; its record is verified again first (it is self-signed). A meter already
        here is never changed: listed as `same`, or as `differs` for the operator to decide (suspend, retire,
        or add the newer record). One transaction: all or nothing."""
        out = Imported()
        with self._transaction():
            for m in source.all():
                current = self.get(m.meter_id)
                if current is not None:
                    (out.same if (current.record, current.status) == (m.record, m.status) else out.differs).append(
                        m.meter_id)
                elif not _record_matches(m):
                    out.invalid.append(m.meter_id)
                else:
                    self.conn.execute("INSERT INTO meters VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                                      (m.meter_id, m.public_key, m.key_id, m.zone_id, m.profile, int(m.role),
                                       m.status.value, m.rated_max_power_w, m.serial_number, m.installer_id,
                                       m.registered_at_ms, m.replaced_at_ms, m.record, now_ms))
                    self._log(m.meter_id, "imported", f"key_id={m.key_id.hex()} serial={m.serial_number} "
                                                      f"status={m.status.value}", now_ms)
                    out.imported.append(m.meter_id)
        return out


def _record_matches(m: Meter) -> bool:
    """The stored record verifies and says what the row says (meter, key, zone, role, rated power, serial)."""
    try:
        reg = parse_registration(m.record).registration
    except ProtocolError:
        return False
    return (reg.meter_id, reg.public_key, reg.zone_id, int(reg.role), reg.rated_max_power_w, reg.serial_number,
            reg.created_at_ms) == (m.meter_id, m.public_key, m.zone_id, int(m.role), m.rated_max_power_w,
                                   m.serial_number, m.registered_at_ms)
