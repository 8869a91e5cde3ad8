"""Python side of the local oracle program: load it into a LiteSVM, build its instructions, initialize it.

Instruction bytes, PDAs and decoders come from gateway.oracle_layout (the one description of the GridTokenX
oracle interface); this module only adds the account lists and the LiteSVM plumbing.
"""

from __future__ import annotations

from pathlib import Path

from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata, TransactionMetadata

from gateway import oracle_layout as layout

PROGRAM_SO_PATH = Path(__file__).resolve().parent / "program" / "oracle.so"


class OracleProgramError(RuntimeError):
    """A transaction to the local oracle failed; `error` is the runtime's error, `logs` the program logs."""

    def __init__(self, what: str, error: object, logs: list[str]) -> None:
        super().__init__(f"{what} failed: {error}")
        self.error = error
        self.logs = logs


def _pk(key: Pubkey | str) -> Pubkey:
    return key if isinstance(key, Pubkey) else Pubkey.from_string(key)


def load_oracle_program(svm: LiteSVM, program_id: Pubkey | str, so_path: Path = PROGRAM_SO_PATH) -> None:
    """Deploy the built oracle.so at program_id (any ID: the real one changes between deployments)."""
    if not so_path.exists():
        raise FileNotFoundError(f"{so_path} missing: build it with `python -m localchain.build`")
    svm.add_program(_pk(program_id), so_path.read_bytes())


def initialize_instruction(program_id: Pubkey | str, authority: Pubkey, chain_bridge: Pubkey) -> Instruction:
    pid = _pk(program_id)
    oracle_data, _ = layout.oracle_data_pda(pid)
    return Instruction(
        pid,
        layout.initialize_data(chain_bridge),
        [
            AccountMeta(oracle_data, is_signer=False, is_writable=True),
            AccountMeta(authority, is_signer=True, is_writable=True),
            AccountMeta(SYSTEM_PROGRAM_ID, is_signer=False, is_writable=False),
        ],
    )


def submit_meter_reading_instruction(
    program_id: Pubkey | str,
    authority: Pubkey,
    meter_id: str,
    energy_produced: int,
    energy_consumed: int,
    reading_timestamp: int,
    zone_id: int,
) -> Instruction:
    pid = _pk(program_id)
    oracle_data, _ = layout.oracle_data_pda(pid)
    meter_state, _ = layout.meter_state_pda(pid, meter_id)
    return Instruction(
        pid,
        layout.submit_meter_reading_data(meter_id, energy_produced, energy_consumed, reading_timestamp, zone_id),
        [
            AccountMeta(oracle_data, is_signer=False, is_writable=False),
            AccountMeta(meter_state, is_signer=False, is_writable=True),
            AccountMeta(authority, is_signer=True, is_writable=True),
            AccountMeta(SYSTEM_PROGRAM_ID, is_signer=False, is_writable=False),
        ],
    )


def admin_instruction(program_id: Pubkey | str, authority: Pubkey, data: bytes) -> Instruction:
    """update_oracle_status / update_api_gateway / update_validation_config / update_production_ratio_config
    (and trigger_market_clearing / aggregate_readings without an aggregator entry): oracle_data (W), authority (S).
    `data` comes from the matching oracle_layout.*_data builder."""
    pid = _pk(program_id)
    oracle_data, _ = layout.oracle_data_pda(pid)
    return Instruction(
        pid,
        data,
        [
            AccountMeta(oracle_data, is_signer=False, is_writable=True),
            AccountMeta(authority, is_signer=True, is_writable=False),
        ],
    )


def send(svm: LiteSVM, payer: Keypair, instructions: list[Instruction], what: str) -> TransactionMetadata:
    """Sign with payer, execute, raise OracleProgramError on failure."""
    msg = Message.new_with_blockhash(instructions, payer.pubkey(), svm.latest_blockhash())
    result = svm.send_transaction(Transaction([payer], msg, svm.latest_blockhash()))
    if isinstance(result, FailedTransactionMetadata):
        raise OracleProgramError(what, result.err(), list(result.meta().logs()))
    return result


def initialize_oracle(
    svm: LiteSVM, program_id: Pubkey | str, admin_keypair: Keypair, chain_bridge: Pubkey | str
) -> layout.OracleConfig:
    """Send the real initialize instruction (admin pays and becomes authority); returns the decoded config."""
    pid = _pk(program_id)
    send(svm, admin_keypair, [initialize_instruction(pid, admin_keypair.pubkey(), _pk(chain_bridge))], "initialize")
    oracle_data, _ = layout.oracle_data_pda(pid)
    account = svm.get_account(oracle_data)
    if account is None:
        raise OracleProgramError("initialize", "oracle_data account missing after initialize", [])
    return layout.decode_oracle_data(bytes(account.data))
