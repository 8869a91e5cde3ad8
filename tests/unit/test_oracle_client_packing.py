"""Pure parts of gateway/oracle/: wire-format size vs real serialization, error parsing, waves, key files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from solders.address_lookup_table_account import AddressLookupTableAccount
from solders.compute_budget import set_compute_unit_limit
from solders.hash import Hash
from solders.keypair import Keypair
from solders.message import Message, MessageV0
from solders.pubkey import Pubkey
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.transaction import VersionedTransaction
from solders.transaction_status import (
    InstructionErrorCustom,
    InstructionErrorFieldless,
    TransactionErrorFieldless,
    TransactionErrorInstructionError,
)

from gateway.oracle.authority_key import create_authority_key_file, load_authority_keypair
from gateway.oracle.errors import OracleClientError, TxFailure, parse_tx_error
from gateway.oracle.instructions import estimate_compute_units, submit_instruction
from gateway.oracle.packing import PACKET_DATA_SIZE, disjoint_wave, max_submits_per_tx, submit_tx_size
from gateway.oracle.submission import Submission
from oracle_interface import addresses
from oracle_interface import layout as ol

PID = Pubkey.from_string(ol.DEVNET_PROGRAM_ID)
AUTH = Keypair()


def real_size(meter_ids: list[str], with_lookup_tables: bool) -> int:
    subs = [Submission(f"k{i}", m, 2**64 - 1, 0, 1_750_000_000, -1) for i, m in enumerate(meter_ids)]
    ixs = [set_compute_unit_limit(1_399_999), *(submit_instruction(PID, AUTH.pubkey(), s) for s in subs)]
    if with_lookup_tables:
        addrs = [addresses.oracle_data_pda(PID)[0], SYSTEM_PROGRAM_ID,
                 *dict.fromkeys(addresses.meter_state_pda(PID, m)[0] for m in meter_ids)]
        msg = MessageV0.try_compile(AUTH.pubkey(), ixs, [AddressLookupTableAccount(Pubkey.new_unique(), addrs)],
                                    Hash.default())
        return len(bytes(VersionedTransaction(msg, [AUTH])))
    return len(bytes(VersionedTransaction(Message.new_with_blockhash(ixs, AUTH.pubkey(), Hash.default()), [AUTH])))


@pytest.mark.parametrize("id_len", [1, 5, 9, 16, 31, 32])
@pytest.mark.parametrize("n", [1, 2, 10, 17, 40])
@pytest.mark.parametrize("alt", [True, False])
def test_size_formula_equals_serialized_size(id_len: int, n: int, alt: bool) -> None:
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    ids = [("M" * 31 + alphabet[i])[-id_len:] for i in range(n)]
    assert len(set(ids)) == len(ids)
    assert submit_tx_size(ids, with_lookup_tables=alt) == real_size(ids, alt)


def test_repeated_meter_shares_its_account() -> None:
    ids = ["METER-001", "METER-002", "METER-001"]
    assert submit_tx_size(ids) == real_size(ids, True)
    assert submit_tx_size(ids, with_lookup_tables=False) == real_size(ids, False)


@pytest.mark.parametrize(
    ("ids", "alt", "expected"),
    [
        ([f"METER-{i:03d}" for i in range(100)], True, 17),  # the worked example's id shape
        ([f"METER-{i:03d}" for i in range(100)], False, 10),  # GridTokenX's legacy packing: at most 10
        ([f"{i:032d}" for i in range(40)], True, 12),  # longest ids
        ([f"{i:x}" for i in range(200)], True, 20),  # 1-2 byte ids
        (["ONLY-ONE"], True, 17),  # one meter, repeated readings in one transaction
    ],
)
def test_max_submits_per_tx(ids: list[str], alt: bool, expected: int) -> None:
    got = max_submits_per_tx(ids, with_lookup_tables=alt)
    assert got == expected
    cyc = [ids[i % len(ids)] for i in range(got + 1)]
    assert real_size(cyc[:got], alt) <= PACKET_DATA_SIZE < real_size(cyc, alt)


def test_max_submits_requires_ids() -> None:
    with pytest.raises(ValueError):
        max_submits_per_tx([])


@pytest.mark.parametrize(
    ("err", "expected"),
    [
        (TransactionErrorInstructionError(3, InstructionErrorCustom(6007)), TxFailure(3, 6007, "RateLimitExceeded")),
        (TransactionErrorInstructionError(1, InstructionErrorCustom(6001)), TxFailure(1, 6001, "UnauthorizedGateway")),
        (TransactionErrorInstructionError(2, InstructionErrorCustom(1)), TxFailure(2, 1, "Custom(1)")),
        (TransactionErrorInstructionError(0, InstructionErrorFieldless.ComputationalBudgetExceeded),
         TxFailure(0, None, "ComputationalBudgetExceeded")),
        (TransactionErrorFieldless.BlockhashNotFound, TxFailure(None, None, "BlockhashNotFound")),
    ],
)
def test_parse_tx_error(err: object, expected: TxFailure) -> None:
    assert parse_tx_error(err) == expected


def test_parse_tx_error_with_deployment_table() -> None:
    old = {6008: "OutdatedReading", 6010: "RateLimitExceeded"}  # numbering before 2026-06-05
    f = parse_tx_error(TransactionErrorInstructionError(0, InstructionErrorCustom(6010)), old)
    assert (f.name, f.code) == ("RateLimitExceeded", 6010)


def test_waves_never_share_a_meter() -> None:
    subs = [Submission(str(i), m, 1, 1, i, 1) for i, m in enumerate(["A", "B", "C", "A", "D", "E"])]
    wave, rest = disjoint_wave(subs, [[0, 1], [2], [3, 4], [5]])
    assert (wave, rest) == ([[0, 1], [2]], [[3, 4], [5]])
    assert disjoint_wave(subs, [[3, 4], [5]]) == ([[3, 4], [5]], [])


def test_compute_unit_estimate() -> None:
    subs = [Submission("a", "METER-001", 1, 1, 1, 1), Submission("b", "METER-001", 1, 1, 2, 1)]
    _, bump = addresses.meter_state_pda(PID, "METER-001")
    steps = 255 - bump
    assert estimate_compute_units(PID, subs, set(), 17_000, 14_500) == 1_000 + 17_000 + 14_500 + 2 * steps * 1_600
    assert estimate_compute_units(PID, subs, {"METER-001"}, 17_000, 14_500) == 1_000 + 2 * (14_500 + steps * 1_600)


def test_authority_key_files(tmp_path: Path) -> None:
    kp = create_authority_key_file(tmp_path / "bridge.json")
    assert (tmp_path / "bridge.json").stat().st_mode & 0o777 == 0o600
    assert len(json.loads((tmp_path / "bridge.json").read_text())) == 64
    assert load_authority_keypair(tmp_path / "bridge.json") == kp
    with pytest.raises(OracleClientError, match="already exists"):
        create_authority_key_file(tmp_path / "bridge.json")
    seed = os.urandom(32)
    hexfile = tmp_path / "seed.key"
    hexfile.write_text(seed.hex() + "\n")
    hexfile.chmod(0o600)
    assert load_authority_keypair(hexfile) == Keypair.from_seed(seed)
    hexfile.chmod(0o644)
    with pytest.raises(OracleClientError, match="chmod 600"):
        load_authority_keypair(hexfile)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2, 3]")
    bad.chmod(0o600)
    with pytest.raises(OracleClientError, match="not a keypair file"):
        load_authority_keypair(bad)
    with pytest.raises(OracleClientError, match="missing"):
        load_authority_keypair(tmp_path / "nope.json")


@pytest.mark.parametrize("cu_price", [0, 5])
async def test_packing_is_tight_across_two_lookup_tables(cu_price: int) -> None:
    from gateway.oracle.client import OracleClient
    from gateway.oracle.instructions import meter_pda
    from gateway.oracle.tables import Table as _Table

    client = OracleClient("http://127.0.0.1:9", ol.DEVNET_PROGRAM_ID, AUTH, cu_price_micro_lamports=cu_price)
    meters = [f"{'M' * (i % 23)}-{i:03d}" for i in range(120)]  # ids of 4..26 bytes
    pdas = [meter_pda(PID, m)[0] for m in meters]
    client._tables = [_Table(Pubkey.new_unique(), [addresses.oracle_data_pda(PID)[0], SYSTEM_PROGRAM_ID, *pdas[:70]]),
                      _Table(Pubkey.new_unique(), pdas[60:])]
    subs = [Submission(str(i), meters[(i * 7) % 120], 1, 1, i, 1) for i in range(400)]
    try:
        batches = client._pack(subs, list(range(400)))
    finally:
        await client.close()
    assert [i for b in batches for i in b] == list(range(400))  # order kept, nothing lost
    for n, b in enumerate(batches):
        assert client._tx_size(subs, b) <= PACKET_DATA_SIZE
        if n + 1 < len(batches):
            assert client._tx_size(subs, [*b, batches[n + 1][0]]) > PACKET_DATA_SIZE
