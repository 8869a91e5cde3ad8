"""Enrolled meters: meter_id -> Ed25519 public key, zone, profile, role, status, rated power.

What a meter is and the rules of enrolment live here (pure); where the meters are kept is the store's business:
a SQLite file in the gateway's state directory (gateway.store.registry, one box), or, with gateway.postgres_dsn
set, the fleet's PostgreSQL database shared by every gateway (gateway.store.postgres_registry): `open_registry`
picks.

A meter enters the registry ONLY from a verified registration record (protocol.registration): its
self-signature proves possession of the key. Never from a reading. Rules for a record whose meter_id is
already registered:
- same key, identical record             -> unchanged (idempotent)
- same key, older or same created_at     -> refused (stale_record: an old record replayed)
- same key, newer, same serial           -> metadata updated (zone, profile, role, rated power, installer)
- same key, newer, different serial      -> meter replacement: counters may restart (replaced_at_ms)
- different key                          -> only if the record also carries the CURRENT key's signature
                                            (previous_public_key == current key): key rotation
- retired meter                          -> refused (retired is final; register a new meter_id)
A suspended meter stays suspended through updates; `resume` makes it active again.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from protocol import MeterRole, Registration

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.store.registry import Registry


class MeterStatus(StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    RETIRED = "retired"


class RegistryError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Meter:
    meter_id: str
    public_key: bytes
    key_id: bytes
    zone_id: int
    profile: str
    role: MeterRole
    status: MeterStatus
    rated_max_power_w: int
    serial_number: str
    installer_id: str
    registered_at_ms: int  # created_at_ms of the record in force
    replaced_at_ms: int | None  # last meter replacement (counters may restart after it)
    record: str  # the GMREG1 text in force (proof, kept for audit)


def decide(reg: Registration, current: Meter | None, text: str) -> str:
    """What a verified registration record does to the meter in force (the rules above): the action, or
    RegistryError."""
    mid = reg.meter_id
    if current is None:
        if reg.previous_public_key is not None:
            raise RegistryError("rotation_for_unknown_meter",
                                f"{mid}: record rotates a key but the meter is not registered")
        return "added"
    if current.status is MeterStatus.RETIRED:
        raise RegistryError("meter_retired", f"{mid}: retired meters cannot be re-registered")
    if text == current.record:
        return "unchanged"
    if reg.created_at_ms <= current.registered_at_ms:
        raise RegistryError("stale_record", f"{mid}: record created_at_ms {reg.created_at_ms} is not newer "
                                            f"than the one in force ({current.registered_at_ms})")
    if reg.public_key != current.public_key:
        if reg.previous_public_key != current.public_key:
            raise RegistryError("key_change_not_authorised",
                                f"{mid}: a new key must be vouched for by the current key (rotation record)")
        return "rotated"
    if reg.serial_number != current.serial_number:
        return "replaced"
    return "updated"


def registry_path(state_dir: str | Path) -> Path:
    """Its own file, so PRAGMA data_version tells the intake exactly when the registry changed."""
    return Path(state_dir) / "registry.sqlite"


def open_registry(cfg: GatewayConfig) -> Registry:
    """The registry of this gateway: its own file in the state directory, or the fleet's (gateway.postgres_dsn)."""
    if cfg.gateway.postgres_dsn:
        from gateway.store.postgres_registry import PostgresRegistry

        return PostgresRegistry(cfg.gateway.postgres_dsn)
    from gateway.store.registry import Registry

    return Registry(registry_path(cfg.gateway.state_dir))
