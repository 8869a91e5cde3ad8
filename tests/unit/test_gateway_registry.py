"""gateway.registry: meters only from verified records; rotation needs the old key; statuses. Every rule on both
backends: a gateway's SQLite file and a fleet's PostgreSQL database (a real throwaway cluster)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.registry import MeterStatus, RegistryError
from gateway.store.postgres_registry import PostgresRegistry
from gateway.store.registry import Registry
from protocol import MeterRole, key_id
from tests.gateway_support import T0_MS, key_for, record_for


@pytest.fixture(params=["sqlite", "postgres"])
def open_reg(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Registry]]:
    """Opens another connection to one registry (as another process or host would)."""
    opened: list[Registry] = []
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else ""

    def make() -> Registry:
        opened.append(PostgresRegistry(dsn, reload_s=0) if dsn else Registry(tmp_path / "registry.sqlite"))
        return opened[-1]

    yield make
    for r in opened:
        r.close()


@pytest.fixture
def reg(open_reg: Callable[[], Registry]) -> Registry:
    return open_reg()


def test_add_from_record(reg: Registry) -> None:
    m, action = reg.add(record_for("HOUSE-1", role=MeterRole.PRODUCTION, zone=7, rated_w=5000), T0_MS)
    assert action == "added"
    assert (m.meter_id, m.zone_id, m.role, m.status, m.rated_max_power_w) == (
        "HOUSE-1", 7, MeterRole.PRODUCTION, MeterStatus.ACTIVE, 5000)
    assert m.key_id == key_id(key_for("HOUSE-1").public_key)
    assert reg.add(record_for("HOUSE-1", role=MeterRole.PRODUCTION, zone=7, rated_w=5000), T0_MS)[1] == "unchanged"


def test_tampered_record_refused(reg: Registry) -> None:
    text = record_for("HOUSE-1")
    import base64
    raw = bytearray(base64.urlsafe_b64decode(text[7:] + "=" * (-len(text[7:]) % 4)))
    raw[40] ^= 1
    bad = "GMREG1:" + base64.urlsafe_b64encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(RegistryError) as e:
        reg.add(bad, T0_MS)
    assert e.value.reason in ("bad_signature", "invalid_field", "malformed")
    assert reg.get("HOUSE-1") is None
    with pytest.raises(RegistryError):
        reg.add("hello", T0_MS)


def test_key_change_requires_old_key(reg: Registry) -> None:
    reg.add(record_for("HOUSE-1"), T0_MS)
    new = key_for("new-key")
    with pytest.raises(RegistryError) as e:
        reg.add(record_for("HOUSE-1", key=new, created_ms=T0_MS), T0_MS)
    assert e.value.reason == "key_change_not_authorised"
    stranger = key_for("stranger")
    with pytest.raises(RegistryError):
        reg.add(record_for("HOUSE-1", key=new, previous=stranger, created_ms=T0_MS), T0_MS)
    m, action = reg.add(record_for("HOUSE-1", key=new, previous=key_for("HOUSE-1"), created_ms=T0_MS), T0_MS)
    assert action == "rotated" and m.public_key == new.public_key


def test_stale_record_and_replacement(reg: Registry) -> None:
    reg.add(record_for("HOUSE-1", created_ms=T0_MS - 1000), T0_MS)
    with pytest.raises(RegistryError) as e:
        reg.add(record_for("HOUSE-1", created_ms=T0_MS - 2000, zone=9), T0_MS)
    assert e.value.reason == "stale_record"
    m, action = reg.add(record_for("HOUSE-1", created_ms=T0_MS, zone=9), T0_MS)
    assert action == "updated" and m.zone_id == 9 and m.replaced_at_ms is None
    m, action = reg.add(record_for("HOUSE-1", created_ms=T0_MS + 1, serial="SN-2"), T0_MS)
    assert action == "replaced" and m.replaced_at_ms == T0_MS + 1


def test_status_changes(reg: Registry, open_reg: Callable[[], Registry]) -> None:
    reg.add(record_for("HOUSE-1"), T0_MS)
    v0 = reg.data_version()
    assert reg.set_status("HOUSE-1", MeterStatus.SUSPENDED, T0_MS).status is MeterStatus.SUSPENDED
    assert reg.add(record_for("HOUSE-1", created_ms=T0_MS, zone=3), T0_MS)[0].status is MeterStatus.SUSPENDED
    reg.set_status("HOUSE-1", MeterStatus.RETIRED, T0_MS)
    with pytest.raises(RegistryError):
        reg.set_status("HOUSE-1", MeterStatus.ACTIVE, T0_MS)
    with pytest.raises(RegistryError):
        reg.add(record_for("HOUSE-1", created_ms=T0_MS + 5), T0_MS)
    with pytest.raises(RegistryError):
        reg.set_status("NOPE", MeterStatus.SUSPENDED, T0_MS)
    v1 = reg.data_version()
    other = open_reg()  # another process (or host) retires it again: this connection sees a change
    other.set_status("HOUSE-1", MeterStatus.RETIRED, T0_MS)
    assert reg.data_version() not in (v0, v1)
    log = reg.conn.execute("SELECT meter_id, action, detail FROM registry_log ORDER BY id").fetchall()
    assert [tuple(r) for r in log] == [
        ("HOUSE-1", "added", f"key_id={key_id(key_for('HOUSE-1').public_key).hex()} serial=SN-1"),
        ("HOUSE-1", "suspended", "status active -> suspended"),
        ("HOUSE-1", "updated", f"key_id={key_id(key_for('HOUSE-1').public_key).hex()} serial=SN-1"),
        ("HOUSE-1", "retired", "status suspended -> retired"),
        ("HOUSE-1", "retired", "status retired -> retired")]


def test_database_path_with_uri_characters(tmp_path: Path) -> None:
    """A state_dir containing '#' or '?' was cut short in the SQLite URI: the database landed in another file."""
    from gateway.store.database import connect

    d = tmp_path / "site #2?x=1 100%"
    conn = connect(d / "g.sqlite")
    conn.execute("CREATE TABLE t (x)")
    conn.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site #2?x=1 100%"]
    assert [p.name for p in d.iterdir() if p.suffix == ".sqlite"] == ["g.sqlite"]
    ro = connect(d / "g.sqlite", readonly=True)
    assert ro.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
    ro.close()
