"""The store's read-only views (gateway/store/fleet.py: what the dashboard, the CLI and the HTTP status endpoints
call) on both backends: the same rows written to a SQLite file and to a real PostgreSQL (a throwaway cluster,
testbed/postgres.py) give the same answers, value for value, and every answer is plain JSON (no driver types
such as PostgreSQL's NUMERIC sums). Then the same through the dashboard's HTTP API (real aiohttp server) and the
CLI's reports with a PostgreSQL config. Plus data_version(), which moves when another connection commits."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
import pytest
from aiohttp.test_utils import TestServer

from gateway.config import DashboardSection
from gateway.health import Thresholds
from gateway.metrics import Metrics
from gateway.registry import Meter
from gateway.store.outbox import OutboxStatus
from gateway.store.postgres import PostgresStore
from gateway.store.postgres_registry import PostgresRegistry
from gateway.store.records import Planned, PlanState, Progress
from gateway.store.registry import Registry
from gateway.store.sqlite import BatchWrite, ReadingRow, RejectionRow, Store
from gateway.web import Dashboard
from gridmeter.cli import main
from protocol import MeterRole
from testbed.postgres import PgCluster
from tests.gateway_support import record_for

pytestmark = pytest.mark.integration

NOW_MS = 1_780_000_000_000
METERS = {"HOUSE-1": MeterRole.GRID, "HOUSE-2": MeterRole.GRID, "PV-1": MeterRole.PRODUCTION,
          "HTTP-1": MeterRole.CONSUMPTION, "QUIET-1": MeterRole.GRID}
TH = Thresholds()


@pytest.fixture(scope="module")
def pg() -> Iterator[PgCluster]:
    with PgCluster() as cluster:
        yield cluster


def _pg_database(cluster: PgCluster) -> str:
    """A fresh database of its own on the module's cluster (its DSN)."""
    name = f"views_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.dsn, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    return cluster.dsn.rsplit("/", 1)[0] + f"/{name}"


def _register(reg: Registry) -> Registry:
    for mid, role in METERS.items():
        reg.add(record_for(mid, role=role, zone=3 if mid == "PV-1" else 1), NOW_MS - 86_400_000)
    return reg


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = _register(Registry(tmp_path / "registry.sqlite"))
    yield reg
    reg.close()


def _reading(mid: str, seq: int, at_ms: int, imp: int, exp: int, status: str = "accepted",
             reason: str | None = None, detail: str | None = None) -> ReadingRow:
    return ReadingRow(mid, seq, at_ms, imp, exp, 0, True, 400 + seq, status, reason, detail, False,
                      f"payload {mid} {seq}".encode(), bytes(64), at_ms + 150)


def _fill(store: Store) -> None:
    """The same history on either backend, written through the store's own write methods."""
    t = NOW_MS - 600_000
    readings = [_reading("HOUSE-1", s, t + s * 10_000, 1000 + 7 * s, 3 * s) for s in range(1, 31)]
    readings += [_reading("HOUSE-2", s, t + s * 10_000, 50 + s, 0) for s in (1, 2, 3, 6)]
    readings.append(_reading("HOUSE-2", 7, t + 70_000, 60, 0, "held", "quality", "clock_unsynced"))
    readings += [_reading("PV-1", s, t - 3_600_000 + s * 60_000, 5, 900 + 11 * s) for s in range(1, 6)]
    rejections = [
        RejectionRow(t + 380_000, "mqtt", "HOUSE-2", "HOUSE-2", 4, "bad_signature", "signature does not verify",
                     True, b"\x01" * 700, b"\x02" * 64),
        RejectionRow(t + 400_000, "mqtt", "HOUSE-2", "HOUSE-2", 5, "not_increasing", "read_at went back",
                     True, b"\x03" * 40, b"\x04" * 64),
        RejectionRow(t + 30_000, "mqtt", "GHOST-9", None, None, "unknown_meter", "not registered", False,
                     b"\x05" * 2000, b""),
        RejectionRow(t + 31_000, "http", None, "HTTP-1", None, "empty_body", "no body", False, b"", b""),
    ]
    progress = {"HOUSE-1": Progress(30, t + 300_000, 1210, 90), "HOUSE-2": Progress(7, t + 60_000, 56, 0),
                "PV-1": Progress(5, t - 3_300_000, 5, 955)}
    counts = {"HOUSE-1": {"accepted": 30}, "HOUSE-2": {"accepted": 4, "held": 1, "rejected": 2, "missing": 2},
              "PV-1": {"accepted": 5}}
    with store.transaction():
        store.write_batch(BatchWrite(readings, rejections, [("HOUSE-2", 4, 5, t + 65_000)], progress, counts,
                                     NOW_MS - 1000))
    planned = [Planned("HOUSE-1", 30, 70, (t + 100_000) // 1000, 10),
               Planned("HOUSE-1", 30, 70, (t + 200_000) // 1000, 20),
               Planned("HOUSE-1", 0, 70, (t + 300_000) // 1000, 30, held_reason="reconcile_mismatch: chain has 3"),
               Planned("HOUSE-1", 0, 1, (t + 310_000) // 1000, 30, held_reason="anomalous_ratio")]
    store.save_plan("HOUSE-1", PlanState(True, 30, t + 300_000, 1210, 90, 1210, 90, t + 300_000, 0), planned, 1,
                    NOW_MS - 500)
    store.set_outbox(["HOUSE-1:" + str((t + 100_000) // 1000)], OutboxStatus.CONFIRMED, NOW_MS - 400,
                     signature="5sig")
    store.set_outbox(["HOUSE-1:" + str((t + 200_000) // 1000)], OutboxStatus.SENT, NOW_MS - 300, attempt=True)
    # GridTokenX HTTP ingest: three readings of a consumption meter (sums in mWh), the first two planned
    for seq, (imp, exp) in enumerate([(1500, 200), (2250, 0), (999, 10)], start=1):
        assert store.add_http_reading("HTTP-1", t + seq * 60_000, imp, exp, b"{}",
                                      f"00000000-0000-4000-8000-00000000000{seq}", t + seq * 60_000 + 20) == \
            ("stored", None)
    store.save_http_plan("HTTP-1", PlanState(True, 2, t + 120_000, 3, 0, 3, 0, t + 120_000, (t + 120_000) // 1000),
                         [Planned("HTTP-1", 0, 3, (t + 120_000) // 1000, 2)], 1, NOW_MS - 200)


def _views(store: Store, meters: dict[str, Meter], registry: Registry) -> dict[str, Any]:
    """Every view the dashboard, the CLI and the status endpoints call, as JSON would carry it."""
    doc = {
        "fleet": store.fleet_health(meters, NOW_MS, TH),
        "one": store.fleet_health({"HOUSE-2": meters["HOUSE-2"]}, NOW_MS, TH),
        "outbox_by_meters": store.outbox_by_meters(sorted(meters)),
        "rejections": store.rejections(),
        "rejections_house2_whole": store.rejections("HOUSE-2", 10, max_payload_bytes=None),
        "rejection_counts": store.rejection_counts(),
        "readings": store.meter_readings("HOUSE-1", 5),
        "intervals": store.meter_intervals("HOUSE-1"),
        "gaps": store.meter_gaps("HOUSE-2"),
        "held_readings": store.held_readings(),
        "held_intervals": store.held_intervals("HOUSE-1"),
        "held_interval_counts": store.held_interval_counts(),
        "outbox_counts": store.outbox_status_counts(),
        "oldest_undecided_ms": store.oldest_undecided_ms(),
        "http_reading": store.http_reading_status(registry, "00000000-0000-4000-8000-000000000001"),
        "http_reading_open": store.http_reading_status(registry, "00000000-0000-4000-8000-000000000003"),
        "http_reading_none": store.http_reading_status(registry, "00000000-0000-4000-8000-00000000000f"),
        "http_meter": store.http_meter_status(meters["HTTP-1"]),
    }
    return json.loads(json.dumps(doc))  # fails on a Decimal, bytes or any other driver type


def test_views_are_the_same_on_sqlite_and_postgresql(tmp_path: Path, pg: PgCluster, registry: Registry) -> None:
    meters = registry.snapshot()
    lite, pgs = Store(tmp_path / "gateway.sqlite"), PostgresStore(_pg_database(pg))
    try:
        for s in (lite, pgs):
            _fill(s)
        on_sqlite, on_pg = _views(lite, meters, registry), _views(pgs, meters, registry)
    finally:
        lite.close()
        pgs.close()
    for name in on_sqlite:
        assert on_pg[name] == on_sqlite[name], name
    v = on_sqlite
    fleet = {r["meter_id"]: r for r in v["fleet"]}
    assert sorted(fleet) == sorted(METERS)
    # the newest rejection of a meter decides its state (SQLite: bare column of MAX; PostgreSQL: DISTINCT ON)
    assert (fleet["HOUSE-2"]["state"], fleet["HOUSE-2"]["state_reason"]) == ("rejecting", "not_increasing")
    assert v["one"] == [fleet["HOUSE-2"]]
    assert (fleet["HOUSE-1"]["accepted"], fleet["HOUSE-1"]["last_seq"], fleet["HOUSE-1"]["import_wh"]) == (30, 30, 1210)
    assert fleet["HTTP-1"]["last_seen_ms"] == NOW_MS - 600_000 + 180_020  # an HTTP meter's facts
    assert fleet["QUIET-1"]["state"] == "new"
    assert v["outbox_by_meters"]["HOUSE-1"] == {
        "confirmed": 1, "pending": 0, "sent": 1, "held": 2, "rejected": 0, "confirmed_produced_wh": 30,
        "confirmed_consumed_wh": 70, "last_confirmed_ts": (NOW_MS - 500_000) // 1000}
    assert [r["reason"] for r in v["rejections"]] == ["empty_body", "unknown_meter", "not_increasing",
                                                      "bad_signature"]
    ghost = v["rejections"][1]
    assert (ghost["payload_bytes"], len(ghost["payload_hex"]) // 2) == (2000, 256)  # stored as a prefix
    assert v["rejections"][0]["payload_hex"] == ""  # an empty body
    assert [len(r["payload_hex"]) // 2 for r in v["rejections_house2_whole"]] == [40, 700]
    assert v["rejection_counts"] == {"bad_signature": 1, "not_increasing": 1, "unknown_meter": 1, "empty_body": 1}
    assert [r["seq"] for r in v["readings"]] == [26, 27, 28, 29, 30]
    assert v["gaps"] == [{"first_seq": 4, "last_seq": 5, "detected_at_ms": NOW_MS - 600_000 + 65_000}]
    assert [(r["meter_id"], r["seq"], r["reason"]) for r in v["held_readings"]] == [("HOUSE-2", 7, "clock_unsynced")]
    assert v["held_interval_counts"] == {"reconcile_mismatch": 1, "anomalous_ratio": 1}
    assert {r["reason"] for r in v["held_intervals"]} == {"reconcile_mismatch: chain has 3", "anomalous_ratio"}
    assert v["outbox_counts"] == {"confirmed": 1, "sent": 1, "held": 2, "pending": 1}
    assert v["oldest_undecided_ms"] == NOW_MS - 500
    assert (v["http_reading"]["status"], v["http_reading"]["intervals"][0]["consumed_wh"]) == ("queued", 3)
    assert v["http_reading_open"]["status"] == "open"
    assert v["http_reading_none"] is None
    assert v["http_meter"]["energy"]["import"] == {"received_wh": "4.749", "submitted_as": "consumed",
                                                   "planned_wh": 3, "waiting_wh": "1.749"}
    assert v["http_meter"]["outbox"] == {"pending": {"intervals": 1, "produced_wh": 0, "consumed_wh": 3}}


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_data_version_moves_when_another_connection_commits(tmp_path: Path, pg: PgCluster, backend: str) -> None:
    """The dashboard's cache key and live-update trigger: a commit by another process or host moves it."""
    def open_store() -> Store:
        return Store(tmp_path / "gateway.sqlite") if backend == "sqlite" else PostgresStore(dsn)

    dsn = _pg_database(pg) if backend == "postgresql" else ""
    reader, writer = open_store(), open_store()
    try:
        before = reader.data_version()
        if backend == "sqlite":  # PostgreSQL's WAL position may also move on its own (autovacuum): not asserted
            assert reader.data_version() == before
        writer.set_setting("lookup_tables", "[]")
        after = reader.data_version()
        assert after != before
        writer.set_setting("lookup_tables", '["x"]')
        assert reader.data_version() != after
    finally:
        reader.close()
        writer.close()


async def _dashboard_api(store: Store, registry: Registry) -> dict[str, Any]:
    """What the dashboard's browser pages fetch, over HTTP from a real aiohttp server."""
    d = Dashboard(DashboardSection(token="views-token-3Kq9-vT2x"), store, registry, Metrics(),
                  clock=lambda: NOW_MS / 1000)
    srv = TestServer(d.app(), host="127.0.0.1")
    await srv.start_server()
    out: dict[str, Any] = {}
    try:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer views-token-3Kq9-vT2x"}) as s:
            for path in ("/api/meters?sort=meter", "/api/meters?state=rejecting,held", "/api/meters/HOUSE-2",
                         "/api/meters/HTTP-1", "/api/held", "/api/rejections?meter=HOUSE-2"):
                async with s.get(srv.make_url(path)) as r:
                    assert r.status == 200, (path, await r.text())
                    out[path] = await r.json()
    finally:
        await srv.close()
        d.close()
    return out


def _cli(argv: list[str]) -> Any:
    buf = StringIO()
    with redirect_stdout(buf):
        assert main(argv) == 0
    return json.loads(buf.getvalue())


async def test_dashboard_and_cli_reports_on_postgresql(tmp_path: Path, pg: PgCluster, registry: Registry) -> None:
    """A PostgreSQL gateway's dashboard and CLI reports show what a SQLite gateway's show for the same history:
    they read the fleet's database through the store (and the fleet's registry)."""
    dsn = _pg_database(pg)
    lite, pgs, pg_registry = Store(tmp_path / "gateway.sqlite"), PostgresStore(dsn), _register(PostgresRegistry(dsn))
    try:
        for s in (lite, pgs):
            _fill(s)
        on_sqlite, on_pg = await _dashboard_api(lite, registry), await _dashboard_api(pgs, pg_registry)
    finally:
        lite.close()
        pgs.close()
        pg_registry.close()
    for path in on_sqlite:
        assert on_pg[path] == on_sqlite[path], path
    page = on_pg["/api/meters?sort=meter"]
    assert [m["meter_id"] for m in page["meters"]] == sorted(METERS)
    assert page["counts"]["rejecting"] == 1 and page["counts"]["held"] == 0
    assert page["outbox"] == {"counts": {"confirmed": 1, "sent": 1, "held": 2, "pending": 1}, "oldest_age_s": 0}
    assert page["meters"][0]["chain"]["confirmed_produced_wh"] == 30  # HOUSE-1's confirmed interval
    assert [m["meter_id"] for m in on_pg["/api/meters?state=rejecting,held"]["meters"]] == ["HOUSE-2"]
    house2 = on_pg["/api/meters/HOUSE-2"]
    assert house2["gaps"] == [{"first_seq": 4, "last_seq": 5, "detected_at_ms": NOW_MS - 535_000}]
    assert [r["reason"] for r in house2["rejections"]] == ["not_increasing", "bad_signature"]
    assert [r["seq"] for r in on_pg["/api/held"]["readings"]] == [7]

    sqlite_cfg, pg_cfg = tmp_path / "sqlite.toml", tmp_path / "pg.toml"
    sqlite_cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n')
    pg_cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path / "pg-host"}"\npostgres_dsn = "{dsn}"\n')
    for argv in (["rejections", "--json"], ["held", "--json"], ["ingest-status", "HTTP-1", "--json"],
                 ["ingest-status", "--reading", "00000000-0000-4000-8000-000000000002", "--json"]):
        from_pg = _cli(["gateway", *argv, "--config", str(pg_cfg)])
        assert from_pg == _cli(["gateway", *argv, "--config", str(sqlite_cfg)]), argv
        assert from_pg, argv  # not an empty report: the rows are the fleet database's
    listed = _cli(["gateway", "meters", "list", "--json", "--config", str(pg_cfg)])
    assert {(m["meter_id"], m["accepted"], m["held"], m["rejected"]) for m in listed} == {
        ("HOUSE-1", 30, 0, 0), ("HOUSE-2", 4, 1, 2), ("PV-1", 5, 0, 0), ("HTTP-1", 0, 0, 0), ("QUIET-1", 0, 0, 0)}
    assert not (tmp_path / "pg-host" / "gateway.sqlite").exists()  # nothing read from (or made in) a SQLite file
