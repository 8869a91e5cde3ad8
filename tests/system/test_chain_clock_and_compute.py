"""The chain client against a cluster that is not the wall clock and a program that costs more than estimated.

- Compute: the local chain's --pda-derivation-cu cost model makes the real oracle program cost far more compute
  than the fixed estimates (13k -> ~35k per submit). The budget comes from simulation (lands first time); with
  simulation off, a transaction that runs out of compute is resent with a raised limit; a submission that fits
  no transaction is `retry` after a bounded number of attempts.
- Clock: the local chain's --clock-offset runs the cluster clock ahead of or behind wall time; the submitter's
  FutureReading decision follows the cluster's clock (Clock sysvar), not the gateway's.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from solders.compute_budget import ID as COMPUTE_BUDGET_ID
from solders.keypair import Keypair

from gateway.metrics import Metrics
from gateway.oracle import OracleClient, Submission
from gateway.oracle.client import CU_LIMIT_CAP, DEFAULT_CU_MARGIN_PCT, DEFAULT_CU_MARGIN_UNITS, OUT_OF_COMPUTE
from gateway.oracle.instructions import DEFAULT_CU_NONCE_RANGE, estimate_compute_units
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from gateway.submit.intervals import Planned, PlanState
from gateway.submit.submitter import Submitter
from localchain.server import LocalChainServer
from localchain.svm import LocalChain, decode_transaction
from oracle_interface import addresses as A
from oracle_interface.layout import DEVNET_PROGRAM_ID
from tests.gateway_support import record_for

pytestmark = pytest.mark.system

DEARER_PDA_CU = 6_000  # the cluster charges 1,500 per program-address derivation


def cu_limit_of(srv: LocalChainServer, signature: str) -> tuple[int, int]:
    """(SetComputeUnitLimit of the landed transaction, units it consumed)."""
    rec = srv.chain.transaction(signature)
    assert rec is not None and rec.err is None
    msg = decode_transaction(rec.raw).message
    keys = list(msg.account_keys)
    limits = [struct.unpack_from("<I", bytes(ix.data), 1)[0] for ix in msg.instructions
              if keys[ix.program_id_index] == COMPUTE_BUDGET_ID and bytes(ix.data)[:1] == b"\x02"]
    assert len(limits) == 1
    return limits[0], rec.compute_units


def subs_for(meters: list[str], ts: int) -> list[Submission]:
    return [Submission(f"{m}:{ts}", m, 100 + i, 40 + i, ts, 3) for i, m in enumerate(meters)]


@pytest.fixture
def bridge() -> Keypair:
    return Keypair()


async def test_budget_from_simulation_covers_a_dearer_program(bridge: Keypair) -> None:
    chain = LocalChain(bridge.pubkey(), pda_derivation_cu=DEARER_PDA_CU)
    async with LocalChainServer(chain=chain) as srv, \
            OracleClient(srv.url, str(chain.program_id), bridge, poll_s=0.05) as client:
        meters = [f"DEAR-{i}" for i in range(6)]
        subs = subs_for(meters, int(time.time()) - 600)
        results = await client.submit(subs)
        assert [r.status for r in results] == ["confirmed"] * len(subs), results
        assert client.stats["failed_transactions"] == 0 and client.stats["budget_raises"] == 0
        assert client.stats["budget_simulations"] >= 1
        for sig in {r.signature for r in results if r.signature}:
            limit, used = cu_limit_of(srv, sig)
            n = sum(1 for r in results if r.signature == sig)
            estimate = estimate_compute_units(chain.program_id, subs[:n], set())
            assert used > estimate  # the fixed estimate would have run out of compute
            margin = used * DEFAULT_CU_MARGIN_PCT // 100 + DEFAULT_CU_MARGIN_UNITS
            assert used <= limit <= used + margin + DEFAULT_CU_NONCE_RANGE + 200  # 200: simulated limit ix cost
        states = await client.fetch_meter_states(meters)
        assert all(s is not None and s.total_readings == 1 for s in states.values())


async def test_out_of_compute_raises_the_budget_and_lands(bridge: Keypair) -> None:
    chain = LocalChain(bridge.pubkey(), pda_derivation_cu=DEARER_PDA_CU)
    async with LocalChainServer(chain=chain) as srv, \
            OracleClient(srv.url, str(chain.program_id), bridge, poll_s=0.05, simulate_budget=False) as client:
        subs = subs_for(["RAISE-1", "RAISE-2"], int(time.time()) - 600)
        results = await client.submit(subs)
        assert [r.status for r in results] == ["confirmed", "confirmed"], results
        assert client.stats["budget_raises"] >= 1 and client.stats["failed_transactions"] >= 1
        assert client.stats["budget_simulations"] == 0
        limit, used = cu_limit_of(srv, results[0].signature or "")
        assert used <= limit
        # the estimates were raised: the next batch of new meters lands without running out again
        raises = client.stats["budget_raises"]
        results = await client.submit(subs_for(["RAISE-3"], int(time.time()) - 600))
        assert results[0].status == "confirmed" and client.stats["budget_raises"] == raises


@pytest.mark.parametrize("simulate_budget", [True, False])
async def test_a_submission_that_fits_no_transaction_is_retry_after_bounded_attempts(
        bridge: Keypair, simulate_budget: bool) -> None:
    chain = LocalChain(bridge.pubkey())
    async with LocalChainServer(chain=chain) as srv, \
            OracleClient(srv.url, str(chain.program_id), bridge, poll_s=0.05,
                         simulate_budget=simulate_budget) as client:
        # the lookup table first (its program derives addresses too), then a cost no transaction can pay:
        await client._ensure_tables([A.meter_state_pda(chain.program_id, "HUGE-1")[0]])
        srv.chain.pda_derivation_cu = 400_000  # ~5 derivations per submit: over 1.4M CU
        (result,) = await asyncio.wait_for(client.submit(subs_for(["HUGE-1"], int(time.time()) - 600)), 120)
        assert result.status == "retry" and result.error in OUT_OF_COMPUTE, result
        # doubling from the estimate up to the cap, one transaction each, then it stops
        limit, attempts = estimate_compute_units(chain.program_id, subs_for(["HUGE-1"], 0), set()), 1
        while limit < CU_LIMIT_CAP:
            limit, attempts = min(CU_LIMIT_CAP, limit * 2), attempts + 1
        assert client.stats["failed_transactions"] == attempts == 8
        assert (await client.fetch_meter_states(["HUGE-1"]))["HUGE-1"] is None


# ---------------------------------------------------------------------------------------------------- clock
@pytest.fixture
async def ledger(tmp_path: Path) -> AsyncIterator[tuple[Store, Registry]]:
    store, registry = Store(tmp_path / "g.sqlite"), Registry(tmp_path / "r.sqlite")
    try:
        yield store, registry
    finally:
        store.close()
        registry.close()


def plan_one(store: Store, registry: Registry, meter_id: str, ts: int, now_ms: int) -> None:
    registry.add(record_for(meter_id, rated_w=20_000), now_ms)
    store.save_plan(meter_id, PlanState(), [Planned(meter_id, 7, 30, ts, 2)], 1, now_ms)


async def test_future_reading_waits_for_a_cluster_clock_behind_wall_time(
        bridge: Keypair, ledger: tuple[Store, Registry]) -> None:
    store, registry = ledger
    now = [time.time()]
    ts = int(now[0]) - 10  # in the past for the gateway, 290 s ahead of the cluster
    chain = LocalChain(bridge.pubkey(), clock_offset_s=-300)
    async with LocalChainServer(chain=chain) as srv, \
            OracleClient(srv.url, str(chain.program_id), bridge, poll_s=0.05) as client:
        assert abs(await client.fetch_chain_time() - (int(time.time()) - 300)) <= 2
        plan_one(store, registry, "LAG-1", ts, int(now[0] * 1000))
        sub = Submitter(store, registry, client, Metrics(), epoch_s=900, clock=lambda: now[0])
        await sub.run_once()
        (row,) = store.outbox_rows("LAG-1")
        assert (row.status, client.stats["transactions"]) == ("pending", 0)  # not sent to fail FutureReading
        (next_attempt_ms,) = store.conn.execute("SELECT next_attempt_ms FROM outbox WHERE key = ?",
                                                (row.key,)).fetchone()
        wait_s = next_attempt_ms / 1000 - now[0]
        assert 300 - 10 - 60 <= wait_s <= 300 - 10 - 60 + 5 + 2  # until the cluster clock has caught up
        now[0] += 60  # not yet due: nothing happens
        await sub.run_once()
        assert store.outbox_rows("LAG-1")[0].status == "pending" and client.stats["transactions"] == 0
        srv.chain.clock_offset_s = 0  # the cluster clock catches up with wall time
        await asyncio.sleep(chain.slot_ms / 1000 * 3)  # the Clock sysvar moves with the next slot
        now[0] += wait_s
        await sub.run_once()
        (row,) = store.outbox_rows("LAG-1")
        assert row.status == "confirmed", row


async def test_reading_ahead_of_wall_time_is_sent_to_a_cluster_clock_ahead(
        bridge: Keypair, ledger: tuple[Store, Registry]) -> None:
    store, registry = ledger
    now = time.time()
    ts = int(now) + 200  # 200 s in the gateway's future; 100 s in the cluster's past
    chain = LocalChain(bridge.pubkey(), clock_offset_s=300)
    async with LocalChainServer(chain=chain) as srv, \
            OracleClient(srv.url, str(chain.program_id), bridge, poll_s=0.05) as client:
        plan_one(store, registry, "LEAD-1", ts, int(now * 1000))
        await Submitter(store, registry, client, Metrics(), epoch_s=900, clock=lambda: now).run_once()
        (row,) = store.outbox_rows("LEAD-1")
        assert row.status == "confirmed", row
        state = (await client.fetch_meter_states(["LEAD-1"]))["LEAD-1"]
        assert state is not None and state.last_reading_timestamp == ts
        assert srv.chain.now() - int(time.time()) in (299, 300, 301)


async def test_cli_serve_clock_offset_and_dearer_compute(bridge: Keypair) -> None:
    import signal
    import subprocess
    import sys

    from testbed.ports import free_port, wait_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gridmeter.cli", "chain", "serve", "--port", str(port),
                             "--chain-bridge", str(bridge.pubkey()), "--clock-offset", "-120",
                             "--pda-derivation-cu", str(DEARER_PDA_CU)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await asyncio.to_thread(wait_port, port, 30)
        async with OracleClient(f"http://127.0.0.1:{port}", DEVNET_PROGRAM_ID, bridge,
                                poll_s=0.05, simulate_budget=False) as client:
            assert abs(await client.fetch_chain_time() - (int(time.time()) - 120)) <= 2
            (res,) = await client.submit(subs_for(["CLI-1"], int(time.time()) - 600))
            assert res.status == "confirmed" and client.stats["budget_raises"] >= 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("args", "fragment"), [
    (["--clock-offset", str(11 * 365 * 86400)], "--clock-offset: "),
    (["--pda-derivation-cu", "-1"], "--pda-derivation-cu: 0..1400000 (got -1)"),
])
def test_cli_serve_bad_options(args: list[str], fragment: str, capsys: pytest.CaptureFixture[str]) -> None:
    from gridmeter.cli import main

    assert main(["chain", "serve", "--chain-bridge", "11111111111111111111111111111111", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gridmeter chain serve: ") and fragment in err
