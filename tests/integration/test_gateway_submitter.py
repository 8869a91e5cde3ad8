"""Submitter against the real local chain (LiteSVM behind JSON-RPC, in-process): a signed backlog becomes
interval submissions whose on-chain totals equal the counter movement; a crash after sending is
reconciled, not resent; thresholds come from the chain."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from solders.keypair import Keypair

from gateway.intake.acceptance import Acceptance, IngressLimit
from gateway.intake.checks import Limits
from gateway.metrics import Metrics
from gateway.oracle import OracleClient
from gateway.oracle.submission import Submission
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from gateway.submit.submitter import Submitter
from localchain.server import LocalChainServer
from protocol import MeterRole
from protocol.topics import readings_topic
from tests.gateway_support import batch, reading, record_for, set_oracle_fields

pytestmark = pytest.mark.integration


@dataclass
class Env:
    srv: LocalChainServer
    store: Store
    registry: Registry
    acceptance: Acceptance
    client: OracleClient
    metrics: Metrics

    def submitter(self) -> Submitter:
        return Submitter(self.store, self.registry, self.client, self.metrics, epoch_s=900,
                         authority=str(self.client.authority.pubkey()))


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    authority = Keypair()
    srv = LocalChainServer(chain_bridge=authority.pubkey())
    await srv.start()
    store, registry = Store(tmp_path / "g.sqlite"), Registry(tmp_path / "r.sqlite")
    metrics = Metrics()
    pool = ThreadPoolExecutor(2)
    acc = Acceptance(store, registry, Limits(), IngressLimit(), metrics, pool)
    client = OracleClient(srv.url, str(srv.chain.program_id), authority, poll_s=0.05)
    try:
        yield Env(srv, store, registry, acc, client, metrics)
    finally:
        await client.close()
        await srv.stop()
        pool.shutdown()
        store.close()
        registry.close()


def backlog(meter_id: str, n: int, start_ms: int, step_ms: int, imp0: int, exp0: int,
            d_imp: int, d_exp: int) -> list[tuple[str, bytes]]:
    signed = [reading(meter_id, i + 1, start_ms + i * step_ms, imp0 + i * d_imp, exp0 + i * d_exp)
              for i in range(n)]
    return [(readings_topic(meter_id), batch(*signed[i : i + 200])) for i in range(0, n, 200)]


async def test_backlog_lands_exactly(env: Env) -> None:
    now_ms = int(time.time() * 1000)
    start = (now_ms // 900_000 - 8) * 900_000 + 7_000  # 8 epochs ago, a little after a boundary
    env.registry.add(record_for("HOUSE-1", rated_w=20_000), now_ms)
    env.registry.add(record_for("PV-1", role=MeterRole.PRODUCTION, rated_w=20_000), now_ms)
    env.registry.add(record_for("SHOP-1", role=MeterRole.CONSUMPTION, rated_w=20_000), now_ms)
    # 10-s readings over 2 h (720): HOUSE-1 imports 3 Wh and exports 1 Wh per reading, etc.
    msgs = backlog("HOUSE-1", 720, start, 10_000, 5_000, 100, 3, 1)
    msgs += backlog("PV-1", 720, start, 10_000, 7, 90_000, 0, 40)
    msgs += backlog("SHOP-1", 720, start, 10_000, 1_000_000, 0, 50, 0)
    env.acceptance.process(msgs)
    sub = env.submitter()
    for _ in range(5):
        await sub.run_once()
        if not env.store.outbox_rows(status="pending") and not env.store.outbox_rows(status="sent"):
            break
    rows = env.store.outbox_rows()
    assert rows and {r.status for r in rows} == {"confirmed"}, [(r.key, r.status, r.reason) for r in rows]
    states = await env.client.fetch_meter_states(["HOUSE-1", "PV-1", "SHOP-1"])
    # every closing reading is in a later epoch; the last closed interval ends at the last reading of
    # an epoch boundary crossing: compare chain totals with the planner's exact accounting
    for mid, (d_imp, d_exp) in {"HOUSE-1": (3, 1), "PV-1": (0, 40), "SHOP-1": (50, 0)}.items():
        plan = env.store.conn.execute("SELECT sub_import_wh, sub_export_wh, last_seq FROM plan_state "
                                      "WHERE meter_id = ?", (mid,)).fetchone()
        st = states[mid]
        assert st is not None
        closing_seq = env.store.conn.execute("SELECT MAX(closing_seq) FROM outbox WHERE meter_id = ?",
                                             (mid,)).fetchone()[0]
        moved_imp, moved_exp = (closing_seq - 1) * d_imp, (closing_seq - 1) * d_exp
        assert (st.total_energy_consumed, st.total_energy_produced) == (moved_imp, moved_exp)
        assert plan[0] - {"HOUSE-1": 5_000, "PV-1": 7, "SHOP-1": 1_000_000}[mid] == (moved_imp if d_imp else 0)
        assert st.total_readings == len([r for r in rows if r.meter_id == mid]) == 7  # 7 epoch crossings
    assert env.client.stats["failed_transactions"] == 0


async def test_thresholds_from_chain_split_and_hold(env: Env) -> None:
    set_oracle_fields(env.srv, max_energy_value=500, min_reading_interval=30)
    now_ms = int(time.time() * 1000)
    start = (now_ms // 900_000 - 3) * 900_000 + 1_000
    env.registry.add(record_for("BIG-1", role=MeterRole.CONSUMPTION, rated_w=50_000), now_ms)
    env.registry.add(record_for("ODD-1", rated_w=50_000), now_ms)  # exports 20x what it imports: ratio 10x fails
    msgs = backlog("BIG-1", 200, start, 10_000, 0, 0, 20, 0)  # 900 s = 90 readings x 20 Wh = 1800 Wh > 500
    msgs += backlog("ODD-1", 200, start, 10_000, 0, 0, 1, 20)
    env.acceptance.process(msgs)
    await env.submitter().run_once()
    big = env.store.outbox_rows("BIG-1")
    assert big and all(r.consumed_wh <= 500 and r.status == "confirmed" for r in big)
    odd = env.store.outbox_rows("ODD-1")
    assert odd and all(r.status == "held" and r.reason == "anomalous_ratio" for r in odd)
    st = (await env.client.fetch_meter_states(["BIG-1"]))["BIG-1"]
    assert st is not None and st.total_energy_consumed == sum(r.consumed_wh for r in big)
    assert (await env.client.fetch_meter_states(["ODD-1"]))["ODD-1"] is None  # nothing reached the chain


async def test_crash_after_send_is_reconciled_not_resent(env: Env) -> None:
    now_ms = int(time.time() * 1000)
    start = (now_ms // 900_000 - 4) * 900_000 + 1_000
    env.registry.add(record_for("HOUSE-9", rated_w=20_000), now_ms)
    env.acceptance.process(backlog("HOUSE-9", 300, start, 10_000, 0, 0, 2, 0))
    sub = env.submitter()
    await sub._plan(await _limits(sub))
    rows = env.store.outbox_rows("HOUSE-9")
    # simulate: sent and landed, then the gateway died before recording the results
    results = await env.client.submit([Submission(r.key, r.meter_id, r.produced_wh, r.consumed_wh,
                                                  r.reading_timestamp, r.zone_id) for r in rows])
    assert {r.status for r in results} == {"confirmed"}
    env.store.set_outbox([r.key for r in rows], "sent", now_ms)
    txs_before = env.client.stats["transactions"]
    await sub.run_once()
    after = env.store.outbox_rows("HOUSE-9")
    assert {(r.status, r.reason) for r in after} == {("confirmed", "reconciled")}
    assert env.client.stats["transactions"] == txs_before  # nothing resent
    st = (await env.client.fetch_meter_states(["HOUSE-9"]))["HOUSE-9"]
    assert st is not None and st.total_readings == len(rows)


async def _limits(sub: Submitter):  # type: ignore[no-untyped-def]
    from gateway.submit.intervals import OracleLimits

    return OracleLimits.from_config(await sub.client.fetch_config())


async def test_http_intervals_are_binned_split_and_reach_chain(env: Env) -> None:
    """GridTokenX ingest readings (interval energies, mWh) go through the same planner: binned per epoch, an
    interval above max_energy_value split into spaced submissions, the last one closed once the meter is
    quiet; the sub-Wh remainder stays in the books."""
    set_oracle_fields(env.srv, max_energy_value=5_000)
    now = int(time.time())
    t0 = (now // 900 - 3) * 900 + 10
    env.registry.add(record_for("METER-001", rated_w=50_000), now * 1000)
    for i, (dt, mwh) in enumerate([(0, 1_500_250), (900, 9_000_000), (960, 700_000)]):
        assert env.store.add_http_reading("METER-001", (t0 + dt) * 1000, mwh, 0, b"{}", f"id-{i}", now * 1000) == \
            ("stored", None)
    sub = env.submitter()
    sub.http_idle_close_s = 0
    await sub.run_once()
    rows = [(r.reading_timestamp - t0, r.consumed_wh, r.status) for r in env.store.outbox_rows("METER-001")]
    # epoch 1 closes at the reading 900 s later: 10500 Wh in 3 parts of <= 5000, spaced by min_reading_interval
    assert rows == [(900 - 120, 3500, "confirmed"), (900 - 60, 3500, "confirmed"), (900, 3500, "confirmed"),
                    (960, 700, "confirmed")]
    st = (await env.client.fetch_meter_states(["METER-001"]))["METER-001"]
    assert st is not None and (st.total_energy_consumed, st.total_readings) == (11_200, 4)
    assert env.store.conn.execute("SELECT sub_import_wh FROM http_plan_state").fetchone() == (11_200,)  # + 250 mWh


class _DropsAfterSend:
    """The oracle client whose RPC connection drops right after the transactions went out: submit raises."""

    def __init__(self, client: OracleClient) -> None:
        self.client, self.sent = client, 0

    async def fetch_config(self):  # type: ignore[no-untyped-def]
        return await self.client.fetch_config()

    async def fetch_meter_states(self, meter_ids):  # type: ignore[no-untyped-def]
        return await self.client.fetch_meter_states(meter_ids)

    async def fetch_chain_time(self) -> int:
        return await self.client.fetch_chain_time()

    async def submit(self, subs):  # type: ignore[no-untyped-def]
        self.sent += 1
        await self.client.submit(subs)
        raise ConnectionResetError("connection reset by peer (after the transactions were sent)")


async def test_unrecorded_send_is_not_resent_before_its_blockhash_expires(env: Env) -> None:
    """Rows marked `sent` whose submit raised were due again at once: the next cycle re-sent them while the first
    transaction could still land (here it already has; the resend would fail as OutdatedReading)."""
    now = [time.time()]
    start = (int(now[0] * 1000) // 900_000 - 3) * 900_000 + 1_000
    env.registry.add(record_for("HOUSE-7", rated_w=20_000), int(now[0] * 1000))
    env.acceptance.process(backlog("HOUSE-7", 200, start, 10_000, 0, 0, 2, 0))
    dropping = _DropsAfterSend(env.client)
    sub = Submitter(env.store, env.registry, dropping, env.metrics, epoch_s=900,
                    authority=str(env.client.authority.pubkey()), clock=lambda: now[0])
    with pytest.raises(ConnectionResetError):
        await sub.run_once()
    rows = env.store.outbox_rows("HOUSE-7")
    assert rows and {r.status for r in rows} == {"sent"}
    await sub.run_once()  # a retry cycle right away: nothing is due yet
    assert dropping.sent == 1 and {r.status for r in env.store.outbox_rows("HOUSE-7")} == {"sent"}
    now[0] += 121  # past the recheck delay: the landed rows are reconciled, not resent
    await sub.run_once()
    assert dropping.sent == 1
    assert {(r.status, r.reason) for r in env.store.outbox_rows("HOUSE-7")} == {("confirmed", "reconciled")}


async def test_killed_before_the_rpc_blocks_later_rows_until_resent(env: Env) -> None:
    """Found by the fault suite (tests/fault, gateway SIGKILLs): the gateway died after marking a row `sent` and
    before its transaction went out. The meter's later rows were submitted meanwhile and landed, so at its recheck
    the row's timestamp was below the chain's last one: counted as landed, held as reconcile_mismatch, its energy
    never reached the chain. Later rows of a meter must wait for an unresolved `sent` row; it is then resent."""
    now = [time.time()]
    start = (int(now[0] * 1000) // 900_000 - 3) * 900_000 + 1_000
    env.registry.add(record_for("HOUSE-6", rated_w=20_000), int(now[0] * 1000))
    env.acceptance.process(backlog("HOUSE-6", 250, start, 10_000, 0, 0, 2, 0))
    sub = Submitter(env.store, env.registry, env.client, env.metrics, epoch_s=900,
                    authority=str(env.client.authority.pubkey()), clock=lambda: now[0])
    await sub._plan(await _limits(sub))
    rows = env.store.outbox_rows("HOUSE-6")
    assert len(rows) >= 2
    first = rows[0]
    now_ms = int(now[0] * 1000)
    env.store.set_outbox([first.key], "sent", now_ms, attempt=True, next_attempt_ms=now_ms + 120_000)  # then killed
    await sub.run_once()  # restarted: the later rows must not overtake the unresolved one
    assert (await env.client.fetch_meter_states(["HOUSE-6"]))["HOUSE-6"] is None
    now[0] += 121  # the lost transaction's blockhash has expired: it never landed, so it is sent again
    await sub.run_once()
    await sub.run_once()
    after = env.store.outbox_rows("HOUSE-6")
    assert {r.status for r in after} == {"confirmed"}, [(r.key, r.status, r.reason) for r in after]
    st = (await env.client.fetch_meter_states(["HOUSE-6"]))["HOUSE-6"]
    assert st is not None and (st.total_energy_consumed, st.total_readings) == (sum(r.consumed_wh for r in rows),
                                                                                len(rows))
