"""The meter registry's SQLite tables (gateway/registry.py says what a meter is and the rules of enrolment;
this module keeps them: the meters in force and the registry_log audit trail). Its own file in the state
directory, so PRAGMA data_version tells the intake exactly when the registry changed. The fleet's registry on
PostgreSQL (gateway.store.postgres_registry) runs this same SQL over its connection."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from gateway.registry import Meter, MeterStatus, RegistryError, decide
from gateway.store.database import Transaction, connect
from protocol import MeterRole, ProtocolError, Registration, key_id, parse_registration
from protocol.identifiers import validate_meter_id

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meters (
    meter_id TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    key_id BLOB NOT NULL,
    zone_id INTEGER NOT NULL,
    profile TEXT NOT NULL,
    role INTEGER NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'retired')),
    rated_max_power_w INTEGER NOT NULL,
    serial_number TEXT NOT NULL,
    installer_id TEXT NOT NULL,
    registered_at_ms INTEGER NOT NULL,
    replaced_at_ms INTEGER,
    record TEXT NOT NULL,
    updated_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS registry_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    meter_id TEXT NOT NULL,
    action TEXT NOT NULL,
    detail TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
"""
_COLUMNS = ("meter_id, public_key, key_id, zone_id, profile, role, status, rated_max_power_w, serial_number, "
            "installer_id, registered_at_ms, replaced_at_ms, record")


_UPDATED = ("public_key", "key_id", "zone_id", "profile", "role", "status", "rated_max_power_w", "serial_number",
            "installer_id", "registered_at_ms", "replaced_at_ms", "record", "updated_at_ms")


def _row(r: tuple[object, ...]) -> Meter:
    return Meter(r[0], r[1], r[2], r[3], r[4], MeterRole(r[5]), MeterStatus(r[6]), r[7], r[8], r[9],  # type: ignore[arg-type]
                 r[10], r[11], r[12])  # type: ignore[arg-type]


class Registry:
    def __init__(self, path: str | Path) -> None:
        self.conn = connect(path)
        self.conn.executescript(_SCHEMA)
        self._writes = 0

    def close(self) -> None:
        self.conn.close()

    def data_version(self) -> tuple[int, int]:
        """Changes whenever anyone committed to the registry (PRAGMA data_version sees other connections,
        e.g. the CLI; the counter sees this one): time to reload a cache."""
        v: int = self.conn.execute("PRAGMA data_version").fetchone()[0]
        return v, self._writes

    def _transaction(self) -> AbstractContextManager[Any]:
        """A registry write: read the meter's record in force, decide, write, log (one writer at a time)."""
        return Transaction(self.conn)

    def get(self, meter_id: str) -> Meter | None:
        r = self.conn.execute(f"SELECT {_COLUMNS} FROM meters WHERE meter_id = ?", (meter_id,)).fetchone()
        return _row(r) if r else None

    def all(self) -> list[Meter]:
        return [_row(r) for r in self.conn.execute(f"SELECT {_COLUMNS} FROM meters ORDER BY meter_id")]

    def snapshot(self) -> dict[str, Meter]:
        return {m.meter_id: m for m in self.all()}

    def add(self, record_text: str, now_ms: int) -> tuple[Meter, str]:
        """Verify and apply a registration record; returns (meter, action). Raises RegistryError."""
        try:
            signed = parse_registration(record_text)
            validate_meter_id(signed.registration.meter_id)  # the one meter_id rule (protocol.identifiers)
        except ProtocolError as exc:
            raise RegistryError(exc.reason, f"registration record refused: {exc}") from exc
        reg = signed.registration
        text = signed.to_text()
        with self._transaction():
            current = self.get(reg.meter_id)
            action = self._decide(reg, current, text)
            if action != "unchanged":
                self._write(reg, current, text, action, now_ms)
        meter = self.get(reg.meter_id)
        assert meter is not None
        return meter, action

    @staticmethod
    def _decide(reg: Registration, current: Meter | None, text: str) -> str:
        return decide(reg, current, text)

    def _write(self, reg: Registration, current: Meter | None, text: str, action: str, now_ms: int) -> None:
        status = current.status.value if current else MeterStatus.ACTIVE.value
        replaced = current.replaced_at_ms if current else None
        if action == "replaced":
            replaced = reg.created_at_ms
        self.conn.execute(
            "INSERT INTO meters VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (meter_id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in _UPDATED),
            (reg.meter_id, reg.public_key, key_id(reg.public_key), reg.zone_id, reg.profile, int(reg.role), status,
             reg.rated_max_power_w, reg.serial_number, reg.installer_id, reg.created_at_ms, replaced, text, now_ms),
        )
        self._log(reg.meter_id, action, f"key_id={key_id(reg.public_key).hex()} serial={reg.serial_number}", now_ms)

    def _log(self, meter_id: str, action: str, detail: str, now_ms: int) -> None:
        self._writes += 1
        self.conn.execute("INSERT INTO registry_log (meter_id, action, detail, at_ms) VALUES (?,?,?,?)",
                          (meter_id, action, detail, now_ms))

    def set_status(self, meter_id: str, status: MeterStatus, now_ms: int) -> Meter:
        try:
            validate_meter_id(meter_id)
        except ProtocolError as exc:
            raise RegistryError(exc.reason, str(exc)) from exc
        with self._transaction():
            current = self.get(meter_id)
            if current is None:
                raise RegistryError("unknown_meter", f"{meter_id}: not registered")
            if current.status is MeterStatus.RETIRED and status is not MeterStatus.RETIRED:
                raise RegistryError("meter_retired", f"{meter_id}: retired is final")
            self.conn.execute("UPDATE meters SET status = ?, updated_at_ms = ? WHERE meter_id = ?",
                              (status.value, now_ms, meter_id))
            self._log(meter_id, status.value, f"status {current.status.value} -> {status.value}", now_ms)
        meter = self.get(meter_id)
        assert meter is not None
        return meter
