"""GridTokenX HTTP ingest on the PostgreSQL store (issue 11), against a real throwaway cluster: the same answers
and rows as on SQLite, and readings of one meter decided one at a time across connections (as two gateway hosts)
by the per-meter advisory lock. Two gateway processes over HTTP: tests/system/test_gateway_fleet_postgres_http.py.
"""

from __future__ import annotations

import asyncio
import json
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.intake.checks import Limits, Progress
from gateway.intake.http import INGEST_PATH, HttpIngest
from gateway.metrics import Metrics
from gateway.registry import MeterStatus
from gateway.store.postgres import PostgresStore
from gateway.store.postgres_registry import PostgresRegistry
from gateway.store.registry import Registry
from gateway.store.sqlite import BatchWrite, Store
from testbed.postgres import PgCluster
from tests.gateway_support import record_for
from tests.gridtokenx_client import MeterClient

pytestmark = pytest.mark.integration

API_KEY = "pg-ingest-api-key-0001"
NOW_S = 1_780_000_000
T0_S = NOW_S - 3600


class Gateway:
    """One HTTP ingest with its own store and registry connections (what one gateway process opens)."""

    def __init__(self, store: Store, registry: Registry) -> None:
        self.store, self.registry = store, registry
        self.ingest = HttpIngest(store, registry, Limits(), [API_KEY], Metrics(), clock=lambda: NOW_S)
        self.server = TestServer(self.ingest.app(), host="127.0.0.1")

    async def post(self, s: aiohttp.ClientSession, body: bytes) -> tuple[int, dict[str, Any]]:
        async with s.post(str(self.server.make_url(INGEST_PATH)), data=body, headers={"X-API-KEY": API_KEY}) as r:
            return r.status, json.loads(await r.text())


@pytest.fixture(params=["sqlite", "postgres"])
async def open_gateway(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Callable[[], Any]]:
    dsn = request.getfixturevalue("pg_dsn") if request.param == "postgres" else ""
    async with AsyncExitStack() as stack:
        async def make() -> Gateway:
            store = PostgresStore(dsn) if dsn else Store(tmp_path / "gateway.sqlite")
            registry = PostgresRegistry(dsn) if dsn else Registry(tmp_path / "registry.sqlite")
            stack.callback(store.close)
            stack.callback(registry.close)
            gw = Gateway(store, registry)
            await gw.server.start_server()
            stack.push_async_callback(gw.server.close)
            return gw

        yield make


def _books(store: Store, meter_id: str) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in store.conn.execute(
        "SELECT seq, timestamp_ms, import_mwh, export_mwh, cum_import_mwh, cum_export_mwh FROM http_ingest "
        "WHERE meter_id = ? ORDER BY seq", (meter_id,))]


async def test_same_answers_and_rows_on_both_backends(open_gateway: Callable[[], Any]) -> None:
    """Fractional Wh exact in mWh, replay 409 with the first reading_id, older 409, implausible 400; a meter
    suspended through another connection (another host's CLI) is refused at once."""
    gw, other = await open_gateway(), await open_gateway()
    c = MeterClient("PG-HTTP-1")
    gw.registry.add(record_for(c.meter_id, key=c.key, rated_w=30_000), 0)
    async with aiohttp.ClientSession() as s:
        first = c.body(T0_S, 1.937, 0.5)
        status, doc = await gw.post(s, first)
        assert status == 202, doc
        assert (await other.post(s, first))[1] == {  # through the other gateway: refused once, naming the original
            "status": "rejected", "reason": "duplicate", "reading_id": doc["reading_id"],
            "error": f"PG-HTTP-1: timestamp {T0_S} already ingested"}
        assert (await other.post(s, c.body(T0_S + 900, 250.001, 0)))[0] == 202
        status, doc = await gw.post(s, c.body(T0_S + 450, 1.0, 0))  # older than the other gateway's last one
        assert (status, doc["reason"]) == (409, "read_at_not_increasing")
        status, doc = await gw.post(s, c.body(T0_S + 960, 20_000.0, 0))  # 20 kWh in 60 s on a 30 kW meter
        assert (status, doc["reason"]) == (400, "implausible_energy")
        other.registry.set_status(c.meter_id, MeterStatus.SUSPENDED, 1)
        status, doc = await gw.post(s, c.body(T0_S + 1800, 3.0, 0))
        assert (status, doc["reason"]) == (403, "meter_suspended")
    assert _books(gw.store, c.meter_id) == [(1, T0_S * 1000, 1937, 500, 1937, 500),
                                            (2, (T0_S + 900) * 1000, 250_001, 0, 251_938, 500)]
    reasons = [r[0] for r in gw.store.conn.execute("SELECT reason FROM rejections ORDER BY id")]
    assert reasons == ["duplicate", "read_at_not_increasing", "implausible_energy", "meter_suspended"]


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_store_rechecks_when_another_gateway_stored_meanwhile(backend: str, request: pytest.FixtureRequest,
                                                              tmp_path: Path) -> None:
    """The checks of a reading were made against the meter's last timestamp; if another gateway stored one since,
    the store answers "moved" (the ingest checks again) instead of storing on a stale check."""
    store = PostgresStore(request.getfixturevalue("pg_dsn")) if backend == "postgres" else Store(tmp_path / "s.db")
    try:
        assert store.add_http_reading("M-1", 1_000_000, 5, 0, b"{}", "r1", 1, checked_last_ms=None) == ("stored", None)
        assert store.add_http_reading("M-1", 2_000_000, 5, 0, b"{}", "r2", 1, checked_last_ms=None) == ("moved", None)
        assert store.add_http_reading("M-1", 2_000_000, 5, 0, b"{}", "r2", 1, checked_last_ms=1_000_000) == \
            ("stored", None)
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_rows_of_the_older_table_still_count(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """http_readings (gateway versions that sent each reading on its own) still decides duplicates and order."""
    store = PostgresStore(request.getfixturevalue("pg_dsn")) if backend == "postgres" else Store(tmp_path / "s.db")
    try:
        store.conn.execute("INSERT INTO http_readings VALUES ('M-1', 5000, ?, 1)", (b"{}",))
        assert store.add_http_reading("M-1", 5000, 1, 0, b"{}", "r0", 2) == ("duplicate", None)
        assert store.add_http_reading("M-1", 4000, 1, 0, b"{}", "r0", 2) == ("not_increasing", None)
        assert store.add_http_reading("M-1", 6000, 1, 0, b"{}", "r1", 2, checked_last_ms=None) == ("moved", None)
        assert store.add_http_reading("M-1", 6000, 1, 0, b"{}", "r1", 2, checked_last_ms=5000) == ("stored", None)
        assert store.add_http_reading("M-1", 6000, 1, 0, b"{}", "r2", 2) == ("duplicate", "r1")
        assert store.add_http_reading("M-1", 7000, 2**63 - 1, 0, b"{}", "r3", 2) == ("overflow", None)
        assert _books(store, "M-1") == [(1, 6000, 1, 0, 1, 0)]
        assert store.conn.execute("SELECT * FROM http_meters").fetchall() == [("M-1", 1, 2)]
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_mqtt_reading_accepted_meanwhile_is_a_source_conflict(backend: str, request: pytest.FixtureRequest,
                                                               tmp_path: Path) -> None:
    """The ingest checked that the meter sends nothing over MQTT; an MQTT batch of it committed before the post's
    transaction took the meter's lock: the post is refused under the lock, not stored as a second source."""
    store = PostgresStore(request.getfixturevalue("pg_dsn")) if backend == "postgres" else Store(tmp_path / "s.db")
    try:
        assert not store.has_mqtt_readings("BOTH-1")
        with store.transaction():
            store.load_progress(["BOTH-1"])
            store.write_batch(BatchWrite([], [], [], {"BOTH-1": Progress(1, 1000, 5, 0)}, {"BOTH-1": {"accepted": 1}},
                                         1000))
        assert store.add_http_reading("BOTH-1", 60_000, 5, 0, b"{}", "r1", 2, checked_last_ms=None) == \
            ("source_conflict", None)
        assert _books(store, "BOTH-1") == []
    finally:
        store.close()


def test_two_hosts_writing_one_meter_at_once(pg_dsn: str) -> None:
    """Two connections (two gateway hosts) store the same 150 readings of 3 meters at once, each reading offered
    by both: every timestamp stored once (seq 1..150, running sums exact), every second offer a duplicate naming
    the first one's reading_id, no error. Without the per-meter lock both would read the same last seq."""
    stores = [PostgresStore(pg_dsn), PostgresStore(pg_dsn)]
    meters, n = ["LOCK-1", "LOCK-2", "LOCK-3"], 150
    outcomes: list[list[tuple[str, str, str | None]]] = [[], []]
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def run(i: int) -> None:
        try:
            barrier.wait()
            for k in range(1, n + 1):
                for m in meters:
                    rid = f"{m}-{k}-host{i}"
                    mwh = 1000 * k + 7  # not whole Wh: the sums must stay exact
                    outcome, original = stores[i].add_http_reading(m, k * 60_000, mwh, k, b"{}", rid, k)
                    outcomes[i].append((outcome, rid, original))
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert errors == []
        stored = {rid for o in outcomes for outcome, rid, _ in o if outcome == "stored"}
        dups = [(rid, original) for o in outcomes for outcome, rid, original in o if outcome == "duplicate"]
        assert {outcome for o in outcomes for outcome, _, _ in o} <= {"stored", "duplicate"}
        assert len(stored) == len(dups) == n * len(meters)
        assert all(original in stored and original[:-1] == rid[:-1] for rid, original in dups)
        for m in meters:
            books = _books(stores[0], m)
            assert [r[0] for r in books] == list(range(1, n + 1))
            assert books[-1][4:] == (sum(1000 * k + 7 for k in range(1, n + 1)), sum(range(1, n + 1)))
        assert stores[0].conn.execute("SELECT meter_id, last_seq FROM http_meters ORDER BY 1").fetchall() == \
            [(m, n) for m in meters]
    finally:
        for s in stores:
            s.close()


class _Interleaved(PostgresStore):
    """A gateway's store whose next add_http_reading first lets `meanwhile` run: another gateway storing a reading
    of the same meter between this one's checks and its write."""

    meanwhile: Callable[[], object] | None = None

    def add_http_reading(self, *args: Any, **kwargs: Any) -> tuple[str, str | None]:
        if self.meanwhile is not None:
            run, self.meanwhile = self.meanwhile, None
            run()
        return super().add_http_reading(*args, **kwargs)


class _ThreadServed:
    """An ingest served by its own event loop in a thread: it answers while the other gateway's handler is inside
    a store call (in one event loop, two servers could not)."""

    def __init__(self, ingest: HttpIngest) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner = web.AppRunner(ingest.app())
        self.url = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _start(self) -> str:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        host, port = self.runner.addresses[0][:2]
        return f"http://{host}:{port}"

    def post(self, body: bytes) -> tuple[int, dict[str, Any]]:
        req = urllib.request.Request(self.url + INGEST_PATH, data=body, method="POST", headers={"X-API-KEY": API_KEY})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(30)
        self.loop.close()


async def test_checks_made_again_when_another_gateway_stored_in_between(pg_dsn: str) -> None:
    """3 kWh 900 s after the meter's last reading is plausible on a 30 kW meter; if another gateway stores a
    reading 60 s before it meanwhile, it is not (30 kW * 60 s = 500 Wh): refused, not stored on a stale check.
    And one stored meanwhile at the same timestamp makes it a duplicate naming that one's reading_id."""
    c = MeterClient("PG-RACE-1")
    a = Gateway(_Interleaved(pg_dsn), PostgresRegistry(pg_dsn))
    b_store, b_registry = PostgresStore(pg_dsn), PostgresRegistry(pg_dsn)
    b = _ThreadServed(HttpIngest(b_store, b_registry, Limits(), [API_KEY], Metrics(), clock=lambda: NOW_S))
    a.registry.add(record_for(c.meter_id, key=c.key, rated_w=30_000), 0)
    await a.server.start_server()
    try:
        async with aiohttp.ClientSession() as s:
            assert (await a.post(s, c.body(T0_S, 10.0, 0)))[0] == 202
            meanwhile: list[tuple[int, dict[str, Any]]] = []
            assert isinstance(a.store, _Interleaved)
            a.store.meanwhile = lambda: meanwhile.append(b.post(c.body(T0_S + 840, 100.0, 0)))
            status, doc = await a.post(s, c.body(T0_S + 900, 3000.0, 0))
            assert meanwhile[0][0] == 202, meanwhile
            assert (status, doc["reason"]) == (400, "implausible_energy"), doc
            a.store.meanwhile = lambda: meanwhile.append(b.post(c.body(T0_S + 1800, 1.0, 0)))
            status, doc = await a.post(s, c.body(T0_S + 1800, 1.0, 0))
            assert meanwhile[1][0] == 202, meanwhile
            assert (status, doc["reason"], doc["reading_id"]) == (409, "duplicate", meanwhile[1][1]["reading_id"])
        assert [r[1] // 1000 - T0_S for r in _books(b_store, c.meter_id)] == [0, 840, 1800]
    finally:
        b.close()
        await a.server.close()
        for closable in (a.store, a.registry, b_store, b_registry):
            closable.close()


def test_connections_lost_are_opened_again(pg_dsn: str) -> None:
    """A server-side end of every session (as a failover or a restart does): the store and the registry connect
    again; a transaction cut in the middle leaves nothing and fails, the next one succeeds. Without this, the
    HTTP ingest of a gateway answered 500 to every post after a PostgreSQL restart."""
    import psycopg

    store, registry = PostgresStore(pg_dsn), PostgresRegistry(pg_dsn, reload_s=0)
    admin = psycopg.connect(pg_dsn, autocommit=True)

    def cut_all() -> None:
        n = admin.execute("SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = "
                          "current_database() AND pid <> pg_backend_pid()").fetchone()
        assert n is not None and n[0] >= 1

    try:
        registry.add(record_for("LOST-1", rated_w=30_000), 0)
        assert store.add_http_reading("LOST-1", 60_000, 5, 0, b"{}", "r1", 1, checked_last_ms=None) == ("stored", None)
        cut_all()
        assert store.add_http_reading("LOST-1", 120_000, 5, 0, b"{}", "r2", 2, checked_last_ms=60_000) == \
            ("stored", None)  # met the loss at BEGIN: run again on a new connection
        cut_all()
        meter = registry.get("LOST-1")  # a SELECT outside a transaction: run again
        assert meter is not None and meter.status is MeterStatus.ACTIVE
        assert registry.data_version()[0] == 1
        with pytest.raises(psycopg.OperationalError), store.transaction() as c:  # cut inside a transaction
            c.execute("INSERT INTO settings VALUES ('half', 'done')")
            cut_all()
            c.execute("INSERT INTO settings VALUES ('other', 'half')")
        assert store.get_setting("half") is None  # rolled back with its connection
        registry.set_status("LOST-1", MeterStatus.SUSPENDED, 3)
        assert [r[0] for r in store.conn.execute("SELECT reading_id FROM http_ingest ORDER BY seq")] == ["r1", "r2"]
        assert registry.data_version()[0] == 2
    finally:
        admin.close()
        store.close()
        registry.close()


async def test_database_down_is_503_then_posts_are_accepted_again(tmp_path: Path) -> None:
    """PostgreSQL stopped under a running ingest: a post is answered 503 store_unavailable (counted, Retry-After),
    not 500; once the server is back (same data), the post is accepted on a new connection, and its re-send is a
    409 duplicate naming it."""
    with PgCluster() as pg:
        dsn = pg.create_database("restart")
        store, registry = PostgresStore(dsn), PostgresRegistry(dsn)
        gw = Gateway(store, registry)
        c = MeterClient("PG-DOWN-1")
        registry.add(record_for(c.meter_id, key=c.key, rated_w=30_000), 0)
        await gw.server.start_server()
        try:
            async with aiohttp.ClientSession() as s:
                first = c.body(T0_S, 2.5, 0)
                status, doc = await gw.post(s, first)
                assert status == 202, doc
                pg.stop_server()
                async with s.post(str(gw.server.make_url(INGEST_PATH)), data=c.body(T0_S + 900, 1.0, 0),
                                  headers={"X-API-KEY": API_KEY}) as r:
                    assert (r.status, (await r.json())["reason"], r.headers["Retry-After"]) == \
                        (503, "store_unavailable", "5")
                pg.start_server()
                second = c.body(T0_S + 900, 1.0, 0)
                status, doc = await gw.post(s, second)
                assert status == 202, doc
                status, again = await gw.post(s, second)  # the client's re-send of an answer it did not get
                assert (status, again["reason"], again["reading_id"]) == (409, "duplicate", doc["reading_id"])
            assert gw.ingest.metrics.rejected.labels("http", "store_unavailable")._value.get() == 1
            assert [r[1] // 1000 - T0_S for r in _books(store, c.meter_id)] == [0, 900]
        finally:
            await gw.server.close()
            store.close()
            registry.close()
