"""Persistence of a LocalChain to a JSON state file, so a demo can stop and resume (pure JSON shapes + one writer).

The file holds the admin and faucet keys, the slot, the program's and lookup tables' accounts, the accounts
transactions touched, and the last DEFAULT_SAVED_HISTORY transactions. It is checked against the program id and
chain_bridge of the chain that resumes from it, and written tmp + fsync + rename + fsync(dir).
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from solders.account import Account
from solders.address_lookup_table_account import ID as ALT_PROGRAM_ID
from solders.keypair import Keypair
from solders.pubkey import Pubkey
from solders.system_program import ID as SYSTEM_PROGRAM_ID

from base.durable_file import write_durably

if TYPE_CHECKING:
    from localchain.svm import LocalChain

__all__ = ["STATE_FORMAT", "StateFileError", "TxRecord", "apply_state", "read_state", "snapshot", "write_state"]

log = logging.getLogger(__name__)

DEFAULT_SAVED_HISTORY = 1_000  # transactions written to the state file (bounded: it is rewritten while dirty)
STATE_FORMAT = "gridmeter-localchain-1"


class StateFileError(Exception):
    """The state file cannot be used (corrupt, other program, other chain_bridge)."""


@dataclass
class TxRecord:
    """One executed transaction, as getTransaction reports it."""

    signature: str
    slot: int
    block_time: int
    raw: bytes  # the wire transaction
    err: Any  # standard JSON error or None
    logs: list[str]
    compute_units: int
    fee: int
    pre_balances: list[int]
    post_balances: list[int]
    loaded_writable: list[str] = field(default_factory=list)
    loaded_readonly: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["raw"] = base64.b64encode(self.raw).decode()
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TxRecord:
        d = dict(d)
        d["raw"] = base64.b64decode(d["raw"])
        return cls(**d)


def _persisted_accounts(chain: LocalChain) -> list[tuple[Pubkey, Account]]:
    """Program-owned and lookup-table accounts, plus the system/program accounts transactions touched."""
    keep: dict[Pubkey, Account] = {}
    for owner in (chain.program_id, ALT_PROGRAM_ID):
        for k, acc in chain.svm.get_program_accounts(owner):
            keep[k] = acc
    for k in chain.touched:
        found = chain.svm.get_account(k)
        if found is not None and not found.executable and found.owner in (SYSTEM_PROGRAM_ID, chain.program_id,
                                                                           ALT_PROGRAM_ID):
            keep[k] = found
    return sorted(keep.items(), key=lambda kv: str(kv[0]))



def snapshot(chain: LocalChain) -> dict[str, Any]:
    """The chain as a JSON-able document (bounded: the last DEFAULT_SAVED_HISTORY transactions)."""
    hist = list(chain.history.values())[-DEFAULT_SAVED_HISTORY:]
    return {
        "format": STATE_FORMAT,
        "program_id": str(chain.program_id),
        "chain_bridge": None if chain.chain_bridge is None else str(chain.chain_bridge),
        "admin_secret": bytes(chain.admin).hex(),
        "faucet_secret": bytes(chain.faucet).hex(),
        "slot": chain.slot,
        "saved_at": chain.now(),
        "accounts": [
            {"pubkey": str(k), "lamports": a.lamports, "owner": str(a.owner), "rent_epoch": a.rent_epoch,
             "data": base64.b64encode(bytes(a.data)).decode()}
            for k, a in _persisted_accounts(chain)
        ],
        "transactions": [r.to_json() for r in hist],
    }



def write_state(path: Path, state: dict[str, Any]) -> None:
    """Write the state file atomically (tmp + fsync + rename + fsync dir); raises OSError."""
    write_durably(path, json.dumps(state, separators=(",", ":")).encode(), 0o600)


def read_state(path: Path, program_id: Pubkey, chain_bridge: Pubkey | None) -> dict[str, Any]:
    """A state file checked against the chain about to resume from it. Raises StateFileError."""
    try:
        state = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise StateFileError(f"{path}: cannot read chain state ({e}); move it away to start a fresh chain") from e
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise StateFileError(f"{path}: not a {STATE_FORMAT} state file")
    if state.get("program_id") != str(program_id):
        raise StateFileError(f"{path}: holds program {state.get('program_id')}, not {program_id}; "
                             "pass --program-id to match or use another state file")
    saved_bridge = state.get("chain_bridge")
    if chain_bridge is not None and saved_bridge not in (None, str(chain_bridge)):
        raise StateFileError(f"{path}: oracle was initialized with chain_bridge {saved_bridge}, not "
                             f"{chain_bridge}; use that key or another state file")
    return state



def apply_state(chain: LocalChain, state: dict[str, Any]) -> None:
    """Restore keys, accounts and history into a freshly built chain. Raises StateFileError."""
    try:
        chain.admin = Keypair.from_bytes(bytes.fromhex(state["admin_secret"]))
        chain.faucet = Keypair.from_bytes(bytes.fromhex(state["faucet_secret"]))
        if state.get("chain_bridge"):
            chain.chain_bridge = Pubkey.from_string(state["chain_bridge"])
        for a in state["accounts"]:
            k = Pubkey.from_string(a["pubkey"])
            chain.svm.set_account(k, Account(int(a["lamports"]), base64.b64decode(a["data"]),
                                            Pubkey.from_string(a["owner"]), False, int(a["rent_epoch"])))
            chain.touched.add(k)
        for t in state["transactions"]:
            rec = TxRecord.from_json(t)
            chain.history[rec.signature] = rec
    except (KeyError, ValueError, TypeError) as e:
        raise StateFileError(f"{chain.state_file}: corrupt chain state ({e})") from e
    log.info("chain state restored from %s: %d accounts, %d transactions, slot %d", chain.state_file,
             len(state["accounts"]), len(state["transactions"]), chain.slot)


