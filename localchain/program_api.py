"""Python side of the local oracle program: load it into a LiteSVM, build its instructions, initialize it.

Instructions, PDAs and decoders come from oracle_interface (the one description of the GridTokenX oracle
interface, shared with the gateway's chain client); this module only adds the LiteSVM plumbing.
"""

from __future__ import annotations

from pathlib import Path

from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.pubkey import Pubkey
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata, TransactionMetadata

from oracle_interface import layout
from oracle_interface.addresses import oracle_data_pda
from oracle_interface.instructions import initialize_instruction, program_key

PROGRAM_SO_PATH = Path(__file__).resolve().parent / "program" / "oracle.so"


class OracleProgramError(RuntimeError):
    """A transaction to the local oracle failed; `error` is the runtime's error, `logs` the program logs."""

    def __init__(self, what: str, error: object, logs: list[str]) -> None:
        super().__init__(f"{what} failed: {error}")
        self.error = error
        self.logs = logs


def load_oracle_program(svm: LiteSVM, program_id: Pubkey | str, so_path: Path = PROGRAM_SO_PATH) -> None:
    """Deploy the built oracle.so at program_id (any ID: the real one changes between deployments)."""
    if not so_path.exists():
        raise FileNotFoundError(f"{so_path} missing: build it with `python -m localchain.build`")
    svm.add_program(program_key(program_id), so_path.read_bytes())


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
    pid = program_key(program_id)
    send(svm, admin_keypair, [initialize_instruction(pid, admin_keypair.pubkey(), program_key(chain_bridge))],
         "initialize")
    oracle_data, _ = oracle_data_pda(pid)
    account = svm.get_account(oracle_data)
    if account is None:
        raise OracleProgramError("initialize", "oracle_data account missing after initialize", [])
    return layout.decode_oracle_data(bytes(account.data))
