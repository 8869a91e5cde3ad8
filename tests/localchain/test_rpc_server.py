"""The local chain's Solana JSON-RPC endpoint, driven by solana-py's AsyncClient (and raw HTTP for shapes
solana-py does not expose): real LiteSVM, real oracle.so, real aiohttp server on a free 127.0.0.1 port."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import base58
import pytest
from solana.rpc.async_api import AsyncClient
from solana.rpc.core import RPCException
from solana.rpc.models import TxOpts
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import Message, MessageV0
from solders.pubkey import Pubkey
from solders.rpc.responses import SendTransactionPreflightFailureMessage
from solders.signature import Signature
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction
from solders.transaction_status import InstructionErrorCustom, TransactionErrorInstructionError

from localchain.server import LocalChainServer
from localchain.svm import LocalChain, StateFileError
from oracle_interface import addresses as A
from oracle_interface import layout as ol
from oracle_interface.instructions import admin_instruction, submit_meter_reading_instruction

pytestmark = pytest.mark.integration

T0 = 1_790_000_000  # pinned chain clock for the conformance tests


class PinnedClock:
    """The chain's wall clock, moved by the test (slots advance only when it moves)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def bridge() -> Keypair:
    return Keypair()


@pytest.fixture
def clock() -> PinnedClock:
    return PinnedClock(T0)


@pytest.fixture
async def srv(bridge: Keypair, clock: PinnedClock) -> AsyncIterator[LocalChainServer]:
    chain = LocalChain(bridge.pubkey(), clock=clock, blockhash_valid_slots=150)
    async with LocalChainServer(chain=chain) as s:
        yield s


@pytest.fixture
async def rpc(srv: LocalChainServer) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(srv.url, commitment="confirmed") as c:
        yield c


async def raw_call(url: str, body: object) -> object:
    async with aiohttp.ClientSession() as s, s.post(url, json=body) as r:
        assert r.status == 200
        return await r.json()


async def send_v0(rpc: AsyncClient, payer: Keypair, ixs: list[Instruction], *, skip_preflight: bool = False,
                  signers: list[Keypair] | None = None) -> Signature:
    bh = (await rpc.get_latest_blockhash()).value.blockhash
    tx = VersionedTransaction(MessageV0.try_compile(payer.pubkey(), ixs, [], bh), signers or [payer])
    return (await rpc.send_transaction(tx, TxOpts(skip_preflight=skip_preflight))).value


def custom_code(e: RPCException) -> tuple[int, int]:
    msg = e.args[0]
    assert isinstance(msg, SendTransactionPreflightFailureMessage)
    err = msg.data.err
    assert isinstance(err, TransactionErrorInstructionError)
    assert isinstance(err.err, InstructionErrorCustom)
    return err.index, err.err.code


def submit_ix(srv: LocalChainServer, authority: Pubkey, meter: str, prod: int, cons: int, ts: int) -> Instruction:
    return submit_meter_reading_instruction(srv.chain.program_id, authority, meter, prod, cons, ts, 1)


async def meter_state(rpc: AsyncClient, srv: LocalChainServer, meter: str) -> ol.MeterState | None:
    acc = (await rpc.get_account_info(A.meter_state_pda(srv.chain.program_id, meter)[0])).value
    return None if acc is None else ol.decode_meter_state(bytes(acc.data))


# ---- plain RPC ------------------------------------------------------------------------------------------
async def test_blockhash_send_status_and_transaction_logs(srv: LocalChainServer, rpc: AsyncClient) -> None:
    payer = Keypair()
    air = (await rpc.request_airdrop(payer.pubkey(), 2_000_000_000)).value
    assert (await rpc.get_signature_statuses([air])).value[0].err is None
    assert (await rpc.get_balance(payer.pubkey())).value == 2_000_000_000
    dest = Pubkey.new_unique()
    bh = await rpc.get_latest_blockhash()
    assert bh.value.last_valid_block_height == (await rpc.get_block_height()).value + 150
    sig = await send_v0(rpc, payer, [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=dest,
                                                               lamports=1_000_000))])
    st = (await rpc.get_signature_statuses([sig, Signature.default()])).value
    assert st[0] is not None and st[0].err is None and st[0].slot == (await rpc.get_slot()).value
    assert st[1] is None
    got = (await rpc.get_transaction(sig, max_supported_transaction_version=0)).value
    assert got is not None
    assert got.transaction.meta.log_messages == [f"Program {SYSTEM_PROGRAM_ID} invoke [1]",
                                                 f"Program {SYSTEM_PROGRAM_ID} success"]
    assert got.transaction.meta.fee == 5000
    assert got.block_time == T0
    assert (await rpc.get_balance(dest)).value == 1_000_000
    assert (await rpc.get_balance(payer.pubkey())).value == 2_000_000_000 - 1_000_000 - 5000
    # a v0 transaction is only returned to clients that declare they understand it
    with pytest.raises(RPCException):
        await rpc.get_transaction(sig)


async def test_send_base58_legacy_and_batch_and_errors(srv: LocalChainServer, rpc: AsyncClient) -> None:
    payer = Keypair()
    await rpc.request_airdrop(payer.pubkey(), 10**9)
    bh = (await rpc.get_latest_blockhash()).value.blockhash
    tx = VersionedTransaction(Message.new_with_blockhash(
        [transfer(TransferParams(from_pubkey=payer.pubkey(), to_pubkey=Pubkey.new_unique(), lamports=10**6))],
        payer.pubkey(), bh), [payer])
    b58 = base58.b58encode(bytes(tx)).decode()
    res = await raw_call(srv.url, [
        {"jsonrpc": "2.0", "id": 1, "method": "sendTransaction", "params": [b58]},
        {"jsonrpc": "2.0", "id": 2, "method": "getHealth"},
        {"jsonrpc": "2.0", "id": 3, "method": "noSuchMethod"},
        {"jsonrpc": "2.0", "id": 4, "method": "getBalance", "params": ["not-a-key"]},
        {"jsonrpc": "2.0", "id": 5, "method": "isBlockhashValid", "params": [str(bh)]},
        {"id": 6},
    ])
    assert isinstance(res, list) and len(res) == 6
    by_id = {r["id"]: r for r in res}
    assert by_id[1]["result"] == str(tx.signatures[0])
    assert by_id[2]["result"] == "ok"
    assert by_id[3]["error"]["code"] == -32601
    assert by_id[4]["error"]["code"] == -32602
    assert by_id[5]["result"]["value"] is True
    assert by_id[6]["error"]["code"] == -32600
    got = (await rpc.get_transaction(tx.signatures[0])).value
    assert got is not None and got.transaction.meta.err is None
    async with aiohttp.ClientSession() as s, s.post(srv.url, data=b"{nope") as r:
        assert (await r.json())["error"]["code"] == -32700
    assert (await rpc.get_fee_for_message(tx.message)).value == 5000
    assert (await rpc.get_minimum_balance_for_rent_exemption(ol.METER_STATE_SIZE)).value == 1_600_800


async def test_preflight_failure_shape_and_skip_preflight_lands_with_error(
        srv: LocalChainServer, rpc: AsyncClient, bridge: Keypair) -> None:
    ix = submit_ix(srv, bridge.pubkey(), "M-FUT", 10, 5, T0 + 61)
    with pytest.raises(RPCException) as e:
        await send_v0(rpc, bridge, [ix])
    assert custom_code(e.value) == (0, 6006)
    assert "FutureReading" in " ".join(e.value.args[0].data.logs or [])
    # simulateTransaction: same error, logs and compute units
    bh = (await rpc.get_latest_blockhash()).value.blockhash
    tx = VersionedTransaction(MessageV0.try_compile(bridge.pubkey(), [ix], [], bh), [bridge])
    sim = (await rpc.simulate_transaction(tx)).value
    assert sim.err == TransactionErrorInstructionError(0, InstructionErrorCustom(6006))
    assert sim.units_consumed and sim.units_consumed > 0
    raw = await raw_call(srv.url, {"jsonrpc": "2.0", "id": 9, "method": "simulateTransaction",
                                   "params": [base64.b64encode(bytes(tx)).decode(), {"encoding": "base64"}]})
    assert raw["result"]["value"]["err"] == {"InstructionError": [0, {"Custom": 6006}]}  # type: ignore[index]
    # skipPreflight: executed, fee charged, error recorded
    sig = (await rpc.send_transaction(tx, TxOpts(skip_preflight=True))).value
    st = (await rpc.get_signature_statuses([sig])).value[0]
    assert st is not None and st.err == TransactionErrorInstructionError(0, InstructionErrorCustom(6006))
    got = (await rpc.get_transaction(sig, max_supported_transaction_version=0)).value
    assert got is not None and got.transaction.meta.err == st.err
    assert any("FutureReading" in line for line in got.transaction.meta.log_messages or [])
    assert await meter_state(rpc, srv, "M-FUT") is None


async def test_duplicate_and_expired_blockhash(srv: LocalChainServer, rpc: AsyncClient, clock: PinnedClock) -> None:
    payer = Keypair()
    await rpc.request_airdrop(payer.pubkey(), 10**9)
    bh = (await rpc.get_latest_blockhash()).value.blockhash
    tx = VersionedTransaction(MessageV0.try_compile(payer.pubkey(), [transfer(TransferParams(
        from_pubkey=payer.pubkey(), to_pubkey=Pubkey.new_unique(), lamports=10**6))], [], bh), [payer])
    await rpc.send_transaction(tx)
    with pytest.raises(RPCException, match="already been processed"):
        await rpc.send_transaction(tx)
    n = len(srv.chain.history)
    assert (await rpc.send_transaction(tx, TxOpts(skip_preflight=True))).value == tx.signatures[0]
    assert len(srv.chain.history) == n  # dropped like a validator drops duplicates
    clock.t += 151 * 0.4  # 151 slots later the blockhash is gone
    assert (await rpc.get_slot()).value >= srv.chain.slot
    assert (await raw_call(srv.url, {"jsonrpc": "2.0", "id": 1, "method": "isBlockhashValid",
                                     "params": [str(bh)]}))["result"]["value"] is False  # type: ignore[index]
    tx2 = VersionedTransaction(MessageV0.try_compile(payer.pubkey(), [transfer(TransferParams(
        from_pubkey=payer.pubkey(), to_pubkey=Pubkey.new_unique(), lamports=10**6))], [], bh), [payer])
    with pytest.raises(RPCException, match="BlockhashNotFound"):
        await rpc.send_transaction(tx2)
    sig = (await rpc.send_transaction(tx2, TxOpts(skip_preflight=True))).value
    assert (await rpc.get_signature_statuses([sig])).value[0] is None  # silently dropped


async def test_bad_signature_rejected(srv: LocalChainServer, rpc: AsyncClient) -> None:
    payer, other = Keypair(), Keypair()
    bh = (await rpc.get_latest_blockhash()).value.blockhash
    msg = MessageV0.try_compile(payer.pubkey(), [transfer(TransferParams(
        from_pubkey=payer.pubkey(), to_pubkey=Pubkey.new_unique(), lamports=1))], [], bh)
    good = VersionedTransaction(msg, [payer])
    forged = VersionedTransaction.populate(msg, [other.sign_message(bytes(good.message.__bytes__()))])
    res = await raw_call(srv.url, {"jsonrpc": "2.0", "id": 1, "method": "sendTransaction",
                                   "params": [base64.b64encode(bytes(forged)).decode(), {"encoding": "base64"}]})
    assert res["error"]["code"] == -32003  # type: ignore[index]


# ---- oracle conformance through RPC (subset; the full set runs in LiteSVM directly) ---------------------
async def test_unauthorized_gateway(srv: LocalChainServer, rpc: AsyncClient) -> None:
    intruder = Keypair()
    await rpc.request_airdrop(intruder.pubkey(), 10**9)
    with pytest.raises(RPCException) as e:
        await send_v0(rpc, intruder, [submit_ix(srv, intruder.pubkey(), "M-1", 10, 5, T0)])
    assert custom_code(e.value) == (0, ol.ERROR_CODES["UnauthorizedGateway"])


async def test_future_reading_boundary(srv: LocalChainServer, rpc: AsyncClient, bridge: Keypair) -> None:
    with pytest.raises(RPCException) as e:
        await send_v0(rpc, bridge, [submit_ix(srv, bridge.pubkey(), "M-1", 10, 5, T0 + 61)])
    assert custom_code(e.value) == (0, ol.ERROR_CODES["FutureReading"])
    await send_v0(rpc, bridge, [submit_ix(srv, bridge.pubkey(), "M-1", 10, 5, T0 + 60)])
    st = await meter_state(rpc, srv, "M-1")
    assert st is not None and st.last_reading_timestamp == T0 + 60 and st.created_at == T0


async def test_rate_limit_and_outdated_per_meter(srv: LocalChainServer, rpc: AsyncClient, bridge: Keypair) -> None:
    await send_v0(rpc, bridge, [submit_ix(srv, bridge.pubkey(), "M-1", 10, 5, T0 - 600)])
    for ts, name in ((T0 - 600, "OutdatedReading"), (T0 - 541, "RateLimitExceeded")):
        with pytest.raises(RPCException) as e:
            await send_v0(rpc, bridge, [submit_ix(srv, bridge.pubkey(), "M-1", 11, 5, ts)])
        assert custom_code(e.value) == (0, ol.ERROR_CODES[name])
    await send_v0(rpc, bridge, [submit_ix(srv, bridge.pubkey(), "M-1", 7, 3, T0 - 540)])  # exactly 60 s later
    await send_v0(rpc, bridge, [submit_ix(srv, bridge.pubkey(), "M-2", 1, 1, T0 - 541)])  # other meter: own limit
    st = await meter_state(rpc, srv, "M-1")
    assert st is not None and (st.total_readings, st.total_energy_produced, st.total_energy_consumed) == (2, 17, 8)


async def test_meter_id_32_bytes_accepted_33_rejected(srv: LocalChainServer, rpc: AsyncClient,
                                                     bridge: Keypair) -> None:
    id32 = "M" * 32
    await send_v0(rpc, bridge, [submit_ix(srv, bridge.pubkey(), id32, 10, 5, T0)])
    st = await meter_state(rpc, srv, id32)
    assert st is not None and st.meter_id == id32
    # 33 bytes cannot be a PDA seed: no client can derive the account; pass the 32-byte prefix's PDA
    id33 = "M" * 33
    pid = srv.chain.program_id
    data = ol.DISC_SUBMIT_METER_READING + struct.pack("<I", 33) + id33.encode() + struct.pack("<QQqi", 1, 1, T0, 1)
    ix = Instruction(pid, data, [
        AccountMeta(A.oracle_data_pda(pid)[0], False, False),
        AccountMeta(A.meter_state_pda(pid, "N" * 32)[0], False, True),
        AccountMeta(bridge.pubkey(), True, True),
        AccountMeta(SYSTEM_PROGRAM_ID, False, False),
    ])
    with pytest.raises(RPCException) as e:
        await send_v0(rpc, bridge, [ix])
    err = e.value.args[0].data.err
    assert isinstance(err, TransactionErrorInstructionError) and err.index == 0
    assert any("seed is too long" in line for line in e.value.args[0].data.logs or [])
    assert await meter_state(rpc, srv, "N" * 32) is None


async def test_several_meters_one_tx_and_one_bad_fails_all(srv: LocalChainServer, rpc: AsyncClient,
                                                          bridge: Keypair) -> None:
    good = [submit_ix(srv, bridge.pubkey(), f"MULTI-{i}", 100 + i, 50, T0 - 10) for i in range(5)]
    sig = await send_v0(rpc, bridge, good)
    got = (await rpc.get_transaction(sig, max_supported_transaction_version=0)).value
    assert got is not None and got.transaction.meta.err is None
    data_lines = [x for x in got.transaction.meta.log_messages or [] if x.startswith("Program data: ")]
    assert len(data_lines) == 5  # one MeterReadingSubmitted event per instruction
    assert base64.b64decode(data_lines[0].split(" ", 2)[2])[:8] == ol.EVENT_METER_READING_SUBMITTED
    for i in range(5):
        st = await meter_state(rpc, srv, f"MULTI-{i}")
        assert st is not None and st.total_energy_produced == 100 + i
    mixed = [submit_ix(srv, bridge.pubkey(), "BAD-A", 1, 1, T0),
             submit_ix(srv, bridge.pubkey(), "BAD-B", 2_000_000, 1, T0),  # above max_energy_value
             submit_ix(srv, bridge.pubkey(), "BAD-C", 1, 1, T0)]
    sig = await send_v0(rpc, bridge, mixed, skip_preflight=True)
    st0 = (await rpc.get_signature_statuses([sig])).value[0]
    assert st0 is not None
    out_of_range = ol.ERROR_CODES["EnergyValueOutOfRange"]
    assert st0.err == TransactionErrorInstructionError(1, InstructionErrorCustom(out_of_range))
    for m in ("BAD-A", "BAD-B", "BAD-C"):
        assert await meter_state(rpc, srv, m) is None


async def test_admin_through_rpc_oracle_inactive(srv: LocalChainServer, rpc: AsyncClient, bridge: Keypair) -> None:
    admin = srv.chain.admin
    await send_v0(rpc, admin, [admin_instruction(srv.chain.program_id, admin.pubkey(),
                                                 ol.update_oracle_status_data(False))])
    with pytest.raises(RPCException) as e:
        await send_v0(rpc, bridge, [submit_ix(srv, bridge.pubkey(), "M-1", 10, 5, T0)])
    assert custom_code(e.value) == (0, ol.ERROR_CODES["OracleInactive"])
    acc = (await rpc.get_account_info(A.oracle_data_pda(srv.chain.program_id)[0])).value
    assert acc is not None and ol.decode_oracle_data(bytes(acc.data)).active is False


# ---- persistence ----------------------------------------------------------------------------------------
async def test_state_file_resume(tmp_path: Path, bridge: Keypair) -> None:
    state = tmp_path / "chain.json"
    clock = PinnedClock(T0)
    async with LocalChainServer(chain=LocalChain(bridge.pubkey(), clock=clock, state_file=state)) as s1:
        async with AsyncClient(s1.url) as rpc:
            sig = await send_v0(rpc, bridge, [submit_ix(s1, bridge.pubkey(), "KEEP-1", 42, 7, T0)])
        slot1, admin1 = s1.chain.slot, s1.chain.admin.pubkey()
    assert state.exists() and oct(state.stat().st_mode & 0o777) == "0o600"
    clock.t += 10
    async with LocalChainServer(chain=LocalChain(bridge.pubkey(), clock=clock, state_file=state)) as s2:
        assert s2.chain.admin.pubkey() == admin1 and s2.chain.slot > slot1
        async with AsyncClient(s2.url) as rpc:
            st = await meter_state(rpc, s2, "KEEP-1")
            assert st is not None and (st.total_energy_produced, st.total_readings) == (42, 1)
            got = (await rpc.get_transaction(sig, max_supported_transaction_version=0)).value
            assert got is not None and got.slot <= slot1
            cfg = ol.decode_oracle_data(bytes((await rpc.get_account_info(A.oracle_data_pda(
                s2.chain.program_id)[0])).value.data))  # type: ignore[union-attr]
            assert cfg.chain_bridge == str(bridge.pubkey())
            # rate limit state survived: a reading 30 s later is still refused
            with pytest.raises(RPCException) as e:
                await send_v0(rpc, bridge, [submit_ix(s2, bridge.pubkey(), "KEEP-1", 1, 1, T0 + 30)])
            assert custom_code(e.value) == (0, ol.ERROR_CODES["RateLimitExceeded"])
    with pytest.raises(StateFileError, match="chain_bridge"):
        LocalChain(Keypair().pubkey(), clock=clock, state_file=state)
    state.write_text("{broken")
    with pytest.raises(StateFileError, match="cannot read"):
        LocalChain(bridge.pubkey(), clock=clock, state_file=state)


async def test_state_saved_while_running(tmp_path: Path, bridge: Keypair) -> None:
    import asyncio
    import json

    state = tmp_path / "chain.json"
    chain = LocalChain(bridge.pubkey(), clock=PinnedClock(T0), state_file=state)
    async with LocalChainServer(chain=chain, save_interval_s=0.05) as s, AsyncClient(s.url) as rpc:
        sig = await send_v0(rpc, bridge, [submit_ix(s, bridge.pubkey(), "LIVE-1", 5, 5, T0)])
        deadline = asyncio.get_running_loop().time() + 5
        while not (state.exists() and str(sig) in state.read_text()):
            assert asyncio.get_running_loop().time() < deadline, "state file not written while running"
            await asyncio.sleep(0.02)
        saved = json.loads(state.read_text())
        pda = str(A.meter_state_pda(s.chain.program_id, "LIVE-1")[0])
        assert any(a["pubkey"] == pda for a in saved["accounts"])


async def test_cli_serve_process(tmp_path: Path, bridge: Keypair) -> None:
    import asyncio
    import signal
    import subprocess
    import sys

    from testbed.ports import free_port, wait_port

    port, state = free_port(), tmp_path / "chain.json"
    proc = subprocess.Popen([sys.executable, "-m", "gridmeter.cli", "chain", "serve", "--port", str(port),
                             "--chain-bridge", str(bridge.pubkey()), "--state", str(state)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        await asyncio.to_thread(wait_port, port, 30)
        async with AsyncClient(f"http://127.0.0.1:{port}") as rpc:
            assert await rpc.is_connected()
            acc = (await rpc.get_account_info(A.oracle_data_pda(Pubkey.from_string(ol.DEVNET_PROGRAM_ID))[0])).value
            assert acc is not None and ol.decode_oracle_data(bytes(acc.data)).chain_bridge == str(bridge.pubkey())
            assert (await rpc.get_balance(bridge.pubkey())).value == 100 * 10**9
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        assert state.exists() and str(bridge.pubkey()) in state.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ([{"jsonrpc": "2.0", "id": i, "method": "getSlot"} for i in range(257)], -32600, "batch"),
        ([], -32600, "batch"),
        ({"jsonrpc": "2.0", "id": 1, "method": "getMultipleAccounts",
          "params": [[str(Pubkey.new_unique()) for _ in range(101)]]}, -32602, "max 100"),
        ({"jsonrpc": "2.0", "id": 1, "method": "getBalance", "params": {"a": 1}}, -32602, "array"),
        ({"jsonrpc": "2.0", "id": 1, "method": "sendTransaction", "params": ["AAAA", {"encoding": "hex"}]},
         -32602, "unsupported encoding"),
        ({"jsonrpc": "2.0", "id": 1, "method": "sendTransaction",
          "params": [base64.b64encode(bytes(1233)).decode(), {"encoding": "base64"}]}, -32602, "too large"),
        ({"jsonrpc": "2.0", "id": 1, "method": "sendTransaction",
          "params": [base64.b64encode(b"\x01garbage").decode(), {"encoding": "base64"}]}, -32602, "deserialize"),
        ({"jsonrpc": "2.0", "id": 1, "method": "getSignatureStatuses", "params": [["x"] * 257]}, -32602, "256"),
        ({"jsonrpc": "2.0", "id": 1, "method": "requestAirdrop", "params": [str(Pubkey.new_unique()), 10**18]},
         -32602, "lamports"),
        ({"jsonrpc": "2.0", "id": 1, "method": "getAccountInfo",
          "params": [str(A.oracle_data_pda(Pubkey.from_string(ol.DEVNET_PROGRAM_ID))[0]),
                     {"encoding": "base58"}]}, -32602, "base 58"),
    ],
)
async def test_bounded_inputs_get_specific_errors(srv: LocalChainServer, body: object, code: int,
                                                  fragment: str) -> None:
    res = await raw_call(srv.url, body)
    assert isinstance(res, dict), res
    assert res["error"]["code"] == code
    assert fragment.lower() in res["error"]["message"].lower()


@pytest.mark.parametrize(
    ("args", "code", "fragment"),
    [
        (["--chain-bridge", "not-base58!"], 2, "--chain-bridge/--program-id: not a base58 public key"),
        (["--chain-bridge", str(Pubkey.new_unique()), "--port", "70000"], 2, "--port: 0..65535 (got 70000)"),
        (["--chain-bridge", str(Pubkey.new_unique()), "--min-reading-interval", "-1"], 2, "--min-reading-interval"),
    ],
)
def test_cli_serve_bad_input_is_a_message_on_stderr(args: list[str], code: int, fragment: str,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from gridmeter.cli import main

    assert main(["chain", "serve", *args]) == code
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("gridmeter chain serve: ") and fragment in out.err


def test_cli_serve_unreadable_state_file_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gridmeter.cli import main

    (tmp_path / "chain.json").write_text("{not json")
    rc = main(["chain", "serve", "--port", "0", "--chain-bridge", str(Pubkey.new_unique()),
               "--state", str(tmp_path / "chain.json")])
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("gridmeter chain serve: --state: ") and "chain.json" in err


async def test_client_gone_mid_request_is_no_traceback(srv: LocalChainServer, caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    """A gateway SIGKILLed while posting: the body never completes. The server answers no one and logs no
    traceback (the fault suite checks every process's output for them); the next client is served."""
    import asyncio

    reader, writer = await asyncio.open_connection(srv.host, srv.port)
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"js")
    await writer.drain()
    await asyncio.sleep(0.2)  # the handler is now waiting for the rest of the body
    writer.transport.abort()  # RST, as a killed process's socket
    await asyncio.sleep(0.3)
    assert await raw_call(srv.url, {"jsonrpc": "2.0", "id": 1, "method": "getHealth"}) == {
        "jsonrpc": "2.0", "id": 1, "result": "ok"}
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]
    del reader
