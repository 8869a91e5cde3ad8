"""The fleet's one registry in PostgreSQL (issue 11), against a real throwaway cluster: a change made on one
host is seen by another host's MQTT intake within the reload period, registry writes from two hosts at once are
decided one after the other, and `gridmeter gateway meters import` moves a host's registry file into it.
(The rules themselves run on both backends in tests/unit/test_gateway_registry.py; two gateway processes:
tests/system/test_gateway_fleet_postgres_http.py.)"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest

from gateway.registry import MeterStatus
from gateway.store.postgres_registry import PostgresRegistry
from gateway.store.registry import Registry
from tests.gateway_support import T0_MS, key_for, record_for

pytestmark = pytest.mark.integration

STRONG = "Zq3-vN8x_Lk2Rt7Wm5Yp"


def test_another_hosts_change_is_seen_within_the_reload_period(pg_dsn: str) -> None:
    clock = [100.0]
    intake = PostgresRegistry(pg_dsn, reload_s=1.0, clock=lambda: clock[0])  # a gateway's MQTT intake
    cli = PostgresRegistry(pg_dsn)  # `gridmeter gateway meters ...` on another host
    try:
        v0 = intake.data_version()
        cli.add(record_for("HOST-1"), T0_MS)
        clock[0] += 0.5
        assert intake.data_version() == v0  # within the period: the snapshot is not reloaded yet
        clock[0] += 0.5
        v1 = intake.data_version()
        assert v1 != v0  # one period after: it is
        cli.set_status("HOST-1", MeterStatus.RETIRED, T0_MS)
        clock[0] += 1.0
        assert intake.data_version() != v1
        assert intake.snapshot()["HOST-1"].status is MeterStatus.RETIRED
        assert intake.get("HOST-1") is not None  # get() always reads the database (HTTP ingest, submitter)
    finally:
        intake.close()
        cli.close()


def test_two_hosts_registering_one_meter_at_once(pg_dsn: str) -> None:
    """The same record added from 8 connections at once: one `added`, the rest `unchanged`, one log row."""
    regs = [PostgresRegistry(pg_dsn) for _ in range(8)]
    text = record_for("RACE-1")
    actions: list[str] = []
    barrier = threading.Barrier(len(regs))

    def add(r: PostgresRegistry) -> None:
        barrier.wait()
        actions.append(r.add(text, T0_MS)[1])

    threads = [threading.Thread(target=add, args=(r,)) for r in regs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert sorted(actions) == ["added"] + ["unchanged"] * 7
        assert regs[0].conn.execute("SELECT action FROM registry_log").fetchall() == [("added",)]
    finally:
        for r in regs:
            r.close()


def test_cli_imports_host_registry_files(pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two hosts' files: host A's meters are copied with their status; host B's meter A already brought in with
    another status is left alone and listed; a row whose record does not verify is skipped (exit 1)."""
    from gridmeter.cli import main

    a, b = Registry(tmp_path / "a.sqlite"), Registry(tmp_path / "b.sqlite")
    for mid in ("IMP-1", "IMP-2"):
        a.add(record_for(mid), T0_MS)
    a.set_status("IMP-2", MeterStatus.RETIRED, T0_MS)
    b.add(record_for("IMP-1"), T0_MS)
    b.set_status("IMP-1", MeterStatus.SUSPENDED, T0_MS)
    b.add(record_for("IMP-3", key=key_for("IMP-3")), T0_MS)
    b.add(record_for("IMP-4"), T0_MS)
    a.close()
    b.close()
    with sqlite3.connect(tmp_path / "b.sqlite") as c:  # a row edited by hand: zone no longer what was signed
        c.execute("UPDATE meters SET zone_id = 99 WHERE meter_id = 'IMP-4'")
    c.close()
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\npostgres_dsn = "{pg_dsn}"\n'
                   f'[dashboard]\nenabled = false\n')
    assert main(["gateway", "meters", "import", str(tmp_path / "a.sqlite"), "--config", str(cfg)]) == 0
    assert capsys.readouterr().out.splitlines() == ["imported: 2 (IMP-1, IMP-2)", "same: 0", "differs: 0",
                                                    "invalid: 0"]
    assert main(["gateway", "meters", "import", str(tmp_path / "b.sqlite"), "--config", str(cfg)]) == 1
    out = capsys.readouterr()
    assert out.out.splitlines() == ["imported: 1 (IMP-3)", "same: 0", "differs: 1 (IMP-1)", "invalid: 1 (IMP-4)"]
    assert "left as they are" in out.err
    fleet = PostgresRegistry(pg_dsn)
    try:
        assert {m.meter_id: m.status for m in fleet.all()} == {
            "IMP-1": MeterStatus.ACTIVE, "IMP-2": MeterStatus.RETIRED, "IMP-3": MeterStatus.ACTIVE}
        imported = fleet.conn.execute("SELECT meter_id, action FROM registry_log ORDER BY id").fetchall()
        assert imported == [("IMP-1", "imported"), ("IMP-2", "imported"), ("IMP-3", "imported")]
        assert fleet.data_version()[0] == 3  # every gateway's intake reloads
    finally:
        fleet.close()
    with psycopg.connect(pg_dsn) as db:  # the rules keep applying: a retired meter stays retired
        assert db.execute("SELECT status FROM meters WHERE meter_id = 'IMP-2'").fetchone() == ("retired",)
    nodsn = tmp_path / "sqlite.toml"
    nodsn.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[dashboard]\nenabled = false\n')
    assert main(["gateway", "meters", "import", str(tmp_path / "a.sqlite"), "--config", str(nodsn)]) == 2
    assert "gateway.postgres_dsn is not set" in capsys.readouterr().err


def test_gateway_start_names_meters_left_in_its_registry_file(pg_dsn: str, tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from gateway.config import parse_config
    from gateway.service import _warn_registry_file_left

    local = Registry(tmp_path / "registry.sqlite")
    for mid in ("LEFT-1", "LEFT-2"):
        local.add(record_for(mid), T0_MS)
    local.close()
    cfg = parse_config({"gateway": {"state_dir": str(tmp_path), "postgres_dsn": pg_dsn},
                        "dashboard": {"enabled": False}})
    fleet = PostgresRegistry(pg_dsn)
    fleet.add(record_for("LEFT-1"), T0_MS)
    fleet.close()
    with caplog.at_level("WARNING", logger="gateway.service"):
        _warn_registry_file_left(tmp_path / "registry.sqlite", cfg)
    assert [r.getMessage() for r in caplog.records] == [
        f"1 meter(s) of {tmp_path / 'registry.sqlite'} are not in the fleet's registry in PostgreSQL (LEFT-2) and are "
        f"refused as unknown_meter: gridmeter gateway meters import {tmp_path / 'registry.sqlite'}"]
