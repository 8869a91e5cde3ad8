"""OracleClient against the local chain over JSON-RPC (real LiteSVM + oracle.so + aiohttp + solana-py):
packing into v0 transactions with lookup tables, per-submission results, isolation of bad submissions,
idempotent resubmission after a crash, blockhash expiry, on-chain totals equal to what was submitted."""

from __future__ import annotations

import base64
import math
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from solana.rpc.async_api import AsyncClient
from solders.address_lookup_table_account import ID as ALT_PROGRAM_ID
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.signature import Signature

from gateway.oracle import OracleClient
from gateway.oracle.packing import PACKET_DATA_SIZE, max_submits_per_tx
from gateway.oracle.submission import Submission
from localchain.server import LocalChainServer
from localchain.svm import LocalChain
from oracle_interface import addresses as A
from oracle_interface import layout as ol

pytestmark = pytest.mark.system


@pytest.fixture
def bridge() -> Keypair:
    return Keypair()


@pytest.fixture
async def srv(bridge: Keypair) -> AsyncIterator[LocalChainServer]:
    async with LocalChainServer(chain=LocalChain(bridge.pubkey(), blockhash_valid_slots=10)) as s:
        yield s


@pytest.fixture
async def client(srv: LocalChainServer, bridge: Keypair) -> AsyncIterator[OracleClient]:
    async with OracleClient(srv.url, str(srv.chain.program_id), bridge, poll_s=0.05) as c:
        yield c


def subs_for(meters: list[str], ts: int, base: int = 100) -> list[Submission]:
    return [Submission(f"{m}:{ts}", m, base + i, base // 2 + i % 5, ts, 3) for i, m in enumerate(meters)]


async def tx_info(srv: LocalChainServer, sig: str) -> tuple[int, dict]:
    """(wire size, getTransaction JSON) of a landed transaction, via the RPC."""
    async with AsyncClient(srv.url) as rpc:
        resp = await rpc.get_transaction(Signature.from_string(sig), encoding="base64",
                                         max_supported_transaction_version=0)
    assert resp.value is not None
    raw = bytes(resp.value.transaction.transaction)  # type: ignore[arg-type]
    rec = srv.chain.transaction(sig)
    assert rec is not None and rec.raw == raw
    return len(raw), {"err": rec.err, "cu": rec.compute_units, "loaded": rec.loaded_writable}


async def test_config_and_missing_states(client: OracleClient, bridge: Keypair) -> None:
    cfg = await client.fetch_config()
    assert cfg.chain_bridge == str(bridge.pubkey()) and cfg.active and cfg.min_reading_interval == 60
    assert (cfg.min_energy_value, cfg.max_energy_value, cfg.max_production_consumption_ratio) == (0, 1_000_000, 1000)
    assert await client.fetch_meter_states(["NOPE-1", "X" * 33]) == {"NOPE-1": None, "X" * 33: None}


async def test_packs_many_submissions_into_few_v0_transactions(srv: LocalChainServer, client: OracleClient) -> None:
    meters = [f"METER-{i:03d}" for i in range(60)]
    now = int(time.time())
    first = subs_for(meters, now - 900)
    res = await client.submit(first)
    assert [r.key for r in res] == [s.key for s in first]
    assert all(r.status == "confirmed" and r.error is None for r in res), res
    per_tx = max_submits_per_tx(meters)
    assert per_tx == 17  # 9-byte ids: 17 submits + SetComputeUnitLimit in 1232 bytes
    sigs = Counter(r.signature for r in res)
    assert len(sigs) == math.ceil(60 / per_tx)
    assert sorted(sigs.values(), reverse=True)[: 60 // per_tx] == [per_tx] * (60 // per_tx)
    for sig in sigs:
        size, info = await tx_info(srv, str(sig))
        assert size <= PACKET_DATA_SIZE and info["err"] is None
        assert len(info["loaded"]) == sigs[sig]  # every MeterState came through the lookup table
    # second round: accounts exist now, same packing, exact totals
    second = subs_for(meters, now - 800, base=1000)
    res2 = await client.submit(second)
    assert all(r.status == "confirmed" for r in res2)
    assert len({r.signature for r in res2}) == math.ceil(60 / per_tx)
    states = await client.fetch_meter_states(meters)
    for i, m in enumerate(meters):
        st = states[m]
        assert st is not None
        assert st.total_energy_produced == first[i].produced_wh + second[i].produced_wh
        assert st.total_energy_consumed == first[i].consumed_wh + second[i].consumed_wh
        assert (st.total_readings, st.last_reading_timestamp, st.zone_id) == (2, now - 800, 3)
    tables = srv.chain.svm.get_program_accounts(ALT_PROGRAM_ID)
    assert len(tables) == 1 and client.lookup_tables == [str(tables[0][0])]


async def test_bad_submissions_isolated_rest_confirmed(srv: LocalChainServer, client: OracleClient) -> None:
    now = int(time.time())
    meters = [f"ISO-{i:02d}" for i in range(30)]
    assert all(r.status == "confirmed" for r in await client.submit(subs_for(meters, now - 600)))
    batch = subs_for(meters, now - 500)
    batch[3] = Submission("future", meters[3], 1, 1, now + 3600, 3)  # FutureReading
    batch[11] = Submission("ratelimited", meters[11], 1, 1, now - 590, 3)  # 10 s after the last one
    batch[20] = Submission("anomalous", meters[20], 50_000, 10, now - 500, 3)  # 5000x > 10x
    batch[25] = Submission("toolong", "Z" * 33, 1, 1, now - 500, 3)
    res = await client.submit(batch)
    by_key = {r.key: r for r in res}
    assert (by_key["future"].status, by_key["future"].error, by_key["future"].code) == (
        "rejected", "FutureReading", 6006)
    assert (by_key["ratelimited"].error, by_key["ratelimited"].code) == ("RateLimitExceeded", 6007)
    assert (by_key["anomalous"].error, by_key["anomalous"].code) == ("AnomalousReading", 6004)
    assert (by_key["toolong"].status, by_key["toolong"].error) == ("rejected", "MeterIdTooLong")
    bad = {"future", "ratelimited", "anomalous", "toolong"}
    assert all(r.status == "confirmed" and r.signature for r in res if r.key not in bad)
    assert all(r.signature is None for r in res if r.key in bad)
    assert client.stats["simulations"] >= 1
    states = await client.fetch_meter_states(meters)
    for i, m in enumerate(meters):
        st = states[m]
        assert st is not None
        if i in (3, 11, 20):
            assert st.total_readings == 1 and st.last_reading_timestamp == now - 600
        elif i != 25:
            assert st.total_readings == 2 and st.total_energy_produced == 2 * (100 + i)


async def test_idempotent_resubmission_after_crash(srv: LocalChainServer, bridge: Keypair,
                                                   client: OracleClient) -> None:
    now = int(time.time())
    meters = [f"IDEM-{i}" for i in range(8)]
    batch = subs_for(meters, now - 300)
    res = await client.submit(batch)
    assert all(r.status == "confirmed" for r in res)
    # the gateway "crashed" before recording the results: a new client resubmits the same intervals
    async with OracleClient(srv.url, str(srv.chain.program_id), bridge, poll_s=0.05,
                            lookup_tables=client.lookup_tables) as again:
        n_tx = len(srv.chain.history)
        res2 = await again.submit(batch)
        assert [(r.status, r.signature, r.error) for r in res2] == [("confirmed", None, None)] * 8
        assert len(srv.chain.history) == n_tx  # nothing sent
        states = await again.fetch_meter_states(meters)
        assert all(s is not None and s.total_readings == 1 and s.total_energy_produced == 100 + i
                   for i, s in enumerate(states.values()))
        # the reused lookup table serves the next round: no new table
        res3 = await again.submit(subs_for(meters, now - 200))
        assert all(r.status == "confirmed" for r in res3)
        assert len(srv.chain.svm.get_program_accounts(ALT_PROGRAM_ID)) == 1


async def test_lost_transaction_resigned_after_blockhash_expiry(srv: LocalChainServer,
                                                                client: OracleClient) -> None:
    now = int(time.time())
    meters = [f"LOST-{i}" for i in range(5)]
    assert all(r.status == "confirmed" for r in await client.submit(subs_for(meters, now - 300)))
    srv.chain.drop_transactions = 1  # the next transaction never lands (like a dropped packet)
    t0 = time.monotonic()
    res = await client.submit(subs_for(meters, now - 200, base=500))
    assert all(r.status == "confirmed" for r in res)
    assert client.stats["resigned"] == 1
    assert time.monotonic() - t0 >= 10 * 0.4  # waited for the 10-slot blockhash to expire before re-signing
    states = await client.fetch_meter_states(meters)
    assert [s.total_energy_produced for s in states.values() if s] == [100 + i + 500 + i for i in range(5)]


async def test_transactions_are_unique(srv: LocalChainServer, client: OracleClient) -> None:
    from solders.hash import Hash

    subs = subs_for(["U-1", "U-2"], int(time.time()) - 100)
    await client._ensure_tables([A.meter_state_pda(client.program_id, s.meter_id)[0] for s in subs])
    a = bytes(client._build(subs, [0, 1], Hash.default()))
    b = bytes(client._build(subs, [0, 1], Hash.default()))
    assert a != b and len(a) == len(b)


async def test_unreachable_rpc_gives_retry(bridge: Keypair) -> None:
    from testbed.ports import free_port

    url = f"http://127.0.0.1:{free_port()}"
    async with OracleClient(url, ol.DEVNET_PROGRAM_ID, bridge, rpc_timeout_s=2) as c:
        res = await c.submit(subs_for(["R-1"], 1_700_000_000))
    assert res[0].status == "retry" and res[0].error and res[0].error.startswith("RpcError")


async def test_worked_example_instruction(bridge: Keypair) -> None:
    from gateway.oracle.instructions import submit_instruction

    pid = Pubkey.from_string(ol.DEVNET_PROGRAM_ID)
    ix = submit_instruction(pid, bridge.pubkey(), Submission("k", "METER-001", 1500, 300, 1750000000, 1))
    assert bytes(ix.data).hex() == ("b5f7c48b4e58c0ce" "09000000" "4d455445522d303031" "dc05000000000000"
                                    "2c01000000000000" "80e14e6800000000" "01000000")
    assert [(str(m.pubkey), m.is_signer, m.is_writable) for m in ix.accounts] == [
        ("DfTLVsxZ5s9mwcBU7FNY6DG9wpaMdoPzisJzaC7psV4g", False, False),
        ("FSgUFMrEzPxwtYABtGWymZYfaf8jveVX1hu1DnL8Wy6E", False, True),
        (str(bridge.pubkey()), True, True),
        ("11111111111111111111111111111111", False, False),
    ]
    assert base64.b64encode(bytes(ix.data))  # bytes are plain bytes


async def test_more_meters_than_one_lookup_table_holds(srv: LocalChainServer, client: OracleClient) -> None:
    now = int(time.time())
    meters = [f"FLEET-{i:03d}" for i in range(300)]  # 302 addresses: a second table is created
    res = await client.submit(subs_for(meters, now - 700))
    assert all(r.status == "confirmed" for r in res)
    assert len(client.lookup_tables) == 2
    assert len({r.signature for r in res}) <= math.ceil(300 / max_submits_per_tx(meters)) + 1
    res = await client.submit(subs_for(meters, now - 600, base=300))
    assert all(r.status == "confirmed" for r in res)
    states = await client.fetch_meter_states(meters)
    assert sum(s.total_energy_produced for s in states.values() if s) == sum(
        100 + i + 300 + i for i in range(300))


async def test_crash_after_send_before_recording(srv: LocalChainServer, bridge: Keypair) -> None:
    """The previous gateway process got 5 of 8 readings on chain (one transaction) and died before recording."""
    from solders.message import MessageV0
    from solders.transaction import VersionedTransaction

    from gateway.oracle.instructions import submit_instruction

    now = int(time.time())
    meters = [f"CRASH-{i}" for i in range(8)]
    batch = subs_for(meters, now - 300)
    async with AsyncClient(srv.url) as rpc:
        bh = (await rpc.get_latest_blockhash()).value.blockhash
        ixs = [submit_instruction(srv.chain.program_id, bridge.pubkey(), s) for s in batch[:5]]
        tx = VersionedTransaction(MessageV0.try_compile(bridge.pubkey(), ixs, [], bh), [bridge])
        await rpc.send_transaction(tx)
    async with OracleClient(srv.url, str(srv.chain.program_id), bridge, poll_s=0.05) as c:
        res = await c.submit(batch)
        assert [(r.status, r.signature is None) for r in res] == [("confirmed", True)] * 5 + [("confirmed", False)] * 3
        states = await c.fetch_meter_states(meters)
    assert [(s.total_readings, s.total_energy_produced) for s in states.values() if s] == [
        (1, 100 + i) for i in range(8)]
