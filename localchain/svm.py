"""LocalChain: a validator-like Solana chain around solders' LiteSVM (the real sBPF runtime, in process).

What a validator does that LiteSVM leaves to us, and how it is done here:
- Slots advance with wall time (one per DEFAULT_SLOT_MS), the Clock sysvar's unix_timestamp is the wall clock,
  and SlotHashes is kept current so address lookup tables can be created (recent_slot must be in SlotHashes)
  and used (addresses added at slot N resolve from N+1). Time advances lazily on every call (`tick`).
- Blockhashes: one per slot, each usable for DEFAULT_BLOCKHASH_VALID_SLOTS slots (LiteSVM only knows one
  blockhash, so its own check is off and ours runs before a transaction reaches it).
- Transaction history with slot, block time, error, logs and balances for getTransaction and
  getSignatureStatuses; duplicates are dropped like a validator drops them.
- Optional persistence of accounts (and the admin key, slot and history) to a JSON file, so a demo can stop
  and resume.

No RPC here: localchain/server.py maps JSON-RPC onto this class.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from solders.account import Account
from solders.address_lookup_table_account import ID as ALT_PROGRAM_ID
from solders.address_lookup_table_account import AddressLookupTable
from solders.clock import Clock
from solders.compute_budget import set_compute_unit_limit
from solders.hash import Hash
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message, MessageV0
from solders.pubkey import Pubkey
from solders.rpc.responses import RpcSimulateTransactionResult
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.system_program import TransferParams, transfer
from solders.transaction import VersionedTransaction
from solders.transaction_metadata import FailedTransactionMetadata, TransactionMetadata
from solders.transaction_status import TransactionErrorFieldless

from localchain import chain_state
from localchain.chain_state import StateFileError, TxRecord
from localchain.compute import AnyMessage, meter_with, priority_fee
from oracle_interface.addresses import oracle_data_pda
from oracle_interface.layout import DEVNET_PROGRAM_ID

log = logging.getLogger(__name__)

__all__ = [
    "ChainRequestError", "LocalChain", "SimOutcome", "StateFileError", "TxRecord", "close_quietly",
    "decode_transaction", "describe_error", "error_json",
]

DEFAULT_SLOT_MS = 400  # a validator's target slot time
DEFAULT_BLOCKHASH_VALID_SLOTS = 150  # MAX_PROCESSING_AGE: a blockhash is accepted for 150 slots (~60 s)
DEFAULT_SLOT_HASHES = 512  # the SlotHashes sysvar holds the 512 most recent slots
DEFAULT_FINALIZED_AFTER_SLOTS = 32  # "finalized" once 32 slots deep (validators: supermajority root)
DEFAULT_HISTORY = 20_000  # transactions kept for getTransaction / getSignatureStatuses (~7 KB each when full)
DEFAULT_CHAIN_BRIDGE_LAMPORTS = 100 * 10**9  # 100 SOL: rent for ~60k meters (1,600,800 each) plus fees
DEFAULT_ADMIN_LAMPORTS = 10 * 10**9
DEFAULT_MAX_AIRDROP_LAMPORTS = 1_000 * 10**9  # per request, like solana-test-validator's faucet cap
DEFAULT_FAUCET_LAMPORTS = 100_000 * 10**9  # faucet top-up from LiteSVM's built-in airdrop account
LAMPORTS_PER_SIGNATURE = 5_000
MAX_TX_BYTES = 1232  # PACKET_DATA_SIZE: a validator rejects larger transactions


class ChainRequestError(Exception):
    """A request the chain refuses before execution; maps onto a JSON-RPC error (code, message, data)."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.data = data


def error_json(err: Any) -> Any:
    """A solders TransactionErrorType in the standard JSON shape, e.g. {"InstructionError":[0,{"Custom":6001}]}."""
    if err is None:
        return None
    res = RpcSimulateTransactionResult(err=err, logs=None, accounts=None, units_consumed=None, return_data=None)
    return json.loads(res.to_json())["err"]


@dataclass(frozen=True)
class SimOutcome:
    err: Any  # JSON error or None
    logs: list[str]
    units_consumed: int
    replacement_blockhash: str | None = None
    accounts: list[tuple[Pubkey, Account | None]] | None = None


def _slot_hash(seed: bytes, slot: int) -> Hash:
    return Hash(hashlib.sha256(seed + struct.pack("<Q", slot)).digest())


def decode_transaction(raw: bytes) -> VersionedTransaction:
    if len(raw) > MAX_TX_BYTES:
        raise ChainRequestError(-32602, f"invalid transaction: encoded transaction too large: {len(raw)} bytes "
                                f"(max: encoded/raw {MAX_TX_BYTES})")
    try:
        tx = VersionedTransaction.from_bytes(raw)
    except Exception as e:  # solders raises its own ValueError subclasses
        raise ChainRequestError(-32602, f"invalid transaction: failed to deserialize VersionedTransaction: {e}") from e
    if bytes(tx) != raw:
        raise ChainRequestError(-32602, "invalid transaction: trailing bytes")
    if not tx.signatures or len(tx.signatures) != tx.message.header.num_required_signatures:
        raise ChainRequestError(-32602, "invalid transaction: signature count does not match the message header")
    return tx


class LocalChain:
    """LiteSVM with the oracle program, advancing like a validator. Not thread-safe: use from one thread/loop."""

    def __init__(
        self,
        chain_bridge: Pubkey | None,
        *,
        program_id: Pubkey | str = DEVNET_PROGRAM_ID,
        state_file: Path | None = None,
        program_path: Path | None = None,
        load_program: bool = True,
        slot_ms: int = DEFAULT_SLOT_MS,
        clock: Callable[[], float] = time.time,
        chain_bridge_lamports: int = DEFAULT_CHAIN_BRIDGE_LAMPORTS,
        blockhash_valid_slots: int = DEFAULT_BLOCKHASH_VALID_SLOTS,
        clock_offset_s: int = 0,
        pda_derivation_cu: int | None = None,
    ) -> None:
        self.program_id = Pubkey.from_string(program_id) if isinstance(program_id, str) else program_id
        self.state_file = state_file
        self.slot_ms = slot_ms
        self.blockhash_valid_slots = blockhash_valid_slots
        self.drop_transactions = 0  # fault injection: the next N sent transactions are lost (like a lost packet)
        self._clock = clock
        self.clock_offset_s = clock_offset_s  # the Clock sysvar runs this far ahead (+) or behind (-) the wall clock
        self.pda_derivation_cu: int | None = None  # localchain.compute: a dearer cost model, after genesis
        self._seed = os.urandom(16)
        # LiteSVM's blockhash check, duplicate history and sigverify are replaced by ours (send/simulate)
        self.svm = LiteSVM().with_blockhash_check(False).with_transaction_history(0).with_sigverify(False)
        self.history: OrderedDict[str, TxRecord] = OrderedDict()
        self.touched: set[Pubkey] = set()
        self._blockhashes: OrderedDict[str, int] = OrderedDict()  # blockhash -> slot
        self._slot_hashes: list[tuple[int, Hash]] = []
        self.dirty = False
        self.admin = Keypair()
        self.faucet = Keypair()
        self._airdrop_nonce = 0
        self.chain_bridge = chain_bridge
        self.program_loaded = False
        start_slot = self.svm.get_clock().slot
        restored = None
        if state_file is not None and state_file.exists():
            restored = chain_state.read_state(state_file, self.program_id, chain_bridge)
            start_slot = int(restored["slot"]) + 1
        self._anchor = (self._clock(), start_slot)
        self.slot = start_slot - DEFAULT_SLOT_HASHES  # SlotHashes starts full, as on a running cluster
        self.tick()
        if load_program:
            self._load_program(program_path)
        if restored is not None:
            chain_state.apply_state(self, restored)
        elif load_program and chain_bridge is not None:
            self._initialize(chain_bridge, chain_bridge_lamports)
        self.pda_derivation_cu = pda_derivation_cu
        self.dirty = True

    # ---- time -------------------------------------------------------------------------------------------
    def now(self) -> int:
        """The cluster's clock (Clock sysvar unix_timestamp): the wall clock plus clock_offset_s."""
        return int(self._clock()) + self.clock_offset_s

    def tick(self) -> int:
        """Advance slots, Clock and SlotHashes to the wall clock. Returns the current slot."""
        wall, slot0 = self._anchor
        target = slot0 + max(0, int((self._clock() - wall) * 1000) // self.slot_ms)
        if target <= self.slot:
            return self.slot
        first = max(self.slot + 1, target - DEFAULT_SLOT_HASHES + 1)
        for s in range(first, target + 1):
            h = _slot_hash(self._seed, s)
            self._slot_hashes.append((s, h))
            self._blockhashes[str(h)] = s
        self._slot_hashes = self._slot_hashes[-DEFAULT_SLOT_HASHES:]
        while self._blockhashes and next(iter(self._blockhashes.values())) < target - self.blockhash_valid_slots:
            self._blockhashes.popitem(last=False)
        self.slot = target
        self.svm.warp_to_slot(target)
        c = self.svm.get_clock()
        self.svm.set_clock(Clock(target, c.epoch_start_timestamp, c.epoch, c.leader_schedule_epoch, self.now()))
        self.svm.set_slot_hashes(list(reversed(self._slot_hashes)))  # newest first, like the sysvar
        self.svm.expire_blockhash()  # LiteSVM's own airdrop transactions stay unique per slot
        return target

    @property
    def block_height(self) -> int:
        return self.slot

    def latest_blockhash(self) -> tuple[Hash, int]:
        self.tick()
        h = self._slot_hashes[-1][1]
        return h, self.slot + self.blockhash_valid_slots

    def is_blockhash_valid(self, blockhash: Hash | str) -> bool:
        self.tick()
        s = self._blockhashes.get(str(blockhash))
        return s is not None and self.slot - s <= self.blockhash_valid_slots

    # ---- program ----------------------------------------------------------------------------------------
    def _load_program(self, program_path: Path | None) -> None:
        from localchain.program_api import load_oracle_program

        if program_path is None:
            load_oracle_program(self.svm, self.program_id)
        else:
            self.svm.add_program(self.program_id, program_path.read_bytes())
        self.program_loaded = True

    def _initialize(self, chain_bridge: Pubkey, lamports: int) -> None:
        from localchain.program_api import initialize_oracle

        self.airdrop(self.admin.pubkey(), DEFAULT_ADMIN_LAMPORTS)
        self.airdrop(chain_bridge, lamports)
        initialize_oracle(self.svm, self.program_id, self.admin, chain_bridge)
        self.touched.add(oracle_data_pda(self.program_id)[0])
        log.info("oracle %s initialized: chain_bridge %s, admin %s", self.program_id, chain_bridge,
                 self.admin.pubkey())

    # Genesis-style edits of OracleData: the program has no instruction for min_reading_interval, so a local
    # chain that must close intervals in seconds (demo, tests) sets it here, before the gateway reads it.
    GENESIS_FIELDS = {"min_reading_interval": (168, "<H"), "min_energy_value": (104, "<Q"),
                      "max_energy_value": (112, "<Q"), "max_production_consumption_ratio": (170, "<H")}

    def set_genesis_fields(self, **fields: int) -> None:
        """Overwrite OracleData fields in place (local chain only). Unknown names raise ValueError."""
        pda = oracle_data_pda(self.program_id)[0]
        acc = self.svm.get_account(pda)
        if acc is None:
            raise ValueError("OracleData does not exist: the oracle is not initialized")
        data = bytearray(acc.data)
        for name, value in fields.items():
            if name not in self.GENESIS_FIELDS:
                raise ValueError(f"{name}: not a genesis-editable OracleData field ({sorted(self.GENESIS_FIELDS)})")
            off, fmt = self.GENESIS_FIELDS[name]
            struct.pack_into(fmt, data, off, value)
        self.svm.set_account(pda, Account(acc.lamports, bytes(data), acc.owner, acc.executable, acc.rent_epoch))
        self.touched.add(pda)

    # ---- accounts ---------------------------------------------------------------------------------------
    def get_account(self, pubkey: Pubkey) -> Account | None:
        self.tick()
        acc = self.svm.get_account(pubkey)
        if acc is None or (acc.lamports == 0 and not acc.data and acc.owner == SYSTEM_PROGRAM_ID):
            return None
        return acc

    def balance(self, pubkey: Pubkey) -> int:
        acc = self.get_account(pubkey)
        return 0 if acc is None else acc.lamports

    def airdrop(self, pubkey: Pubkey, lamports: int) -> str:
        """A real, recorded system transfer from the chain's faucet key (so getTransaction finds it)."""
        if not 0 < lamports <= DEFAULT_MAX_AIRDROP_LAMPORTS:
            raise ChainRequestError(-32602, f"airdrop: lamports must be 1..{DEFAULT_MAX_AIRDROP_LAMPORTS}")
        if self._lamports(self.faucet.pubkey()) < lamports + LAMPORTS_PER_SIGNATURE:
            self.svm.airdrop(self.faucet.pubkey(), DEFAULT_FAUCET_LAMPORTS)
            self.svm.expire_blockhash()
        bh, _ = self.latest_blockhash()
        self._airdrop_nonce += 1
        ixs = [transfer(TransferParams(from_pubkey=self.faucet.pubkey(), to_pubkey=pubkey, lamports=lamports))]
        if self._airdrop_nonce > 1:  # two equal airdrops in one slot must still be distinct transactions
            ixs.insert(0, set_compute_unit_limit(200_000 - self._airdrop_nonce % 100_000))
        tx = VersionedTransaction(Message.new_with_blockhash(ixs, self.faucet.pubkey(), bh), [self.faucet])
        sig = self.send(bytes(tx), skip_preflight=True)
        rec = self.history.get(sig)
        if rec is None or rec.err is not None:
            raise ChainRequestError(-32603, f"airdrop failed: {None if rec is None else rec.err}")
        return sig

    def resolve_lookups(self, message: AnyMessage) -> tuple[list[Pubkey], list[Pubkey]]:
        """Loaded (writable, readonly) addresses of a v0 message; ChainRequestError if a table is bad."""
        if not isinstance(message, MessageV0):
            return [], []
        writable: list[Pubkey] = []
        readonly: list[Pubkey] = []
        for lk in message.address_table_lookups:
            acc = self.svm.get_account(lk.account_key)
            if acc is None or acc.owner != ALT_PROGRAM_ID:
                raise ChainRequestError(-32602, f"address lookup table {lk.account_key} not found")
            addrs = list(AddressLookupTable.deserialize(bytes(acc.data)).addresses)
            for idx_list, out in ((lk.writable_indexes, writable), (lk.readonly_indexes, readonly)):
                for i in bytes(idx_list):
                    if i >= len(addrs):
                        raise ChainRequestError(-32602, "invalid address lookup table index")
                    out.append(addrs[i])
        return writable, readonly

    def _all_keys(self, tx: VersionedTransaction) -> tuple[list[Pubkey], list[Pubkey], list[Pubkey]]:
        try:
            w, r = self.resolve_lookups(tx.message)
        except ChainRequestError:
            w, r = [], []
        return list(tx.message.account_keys) + w + r, w, r

    # ---- transactions -----------------------------------------------------------------------------------
    def simulate(self, raw: bytes, *, sig_verify: bool = False, replace_blockhash: bool = False) -> SimOutcome:
        tx = decode_transaction(raw)
        self.tick()
        replacement = None
        if replace_blockhash:
            h, _ = self.latest_blockhash()
            replacement = str(h)
        elif not self.is_blockhash_valid(tx.message.recent_blockhash):
            return SimOutcome(error_json(TransactionErrorFieldless.BlockhashNotFound), [], 0)
        if sig_verify:
            self._verify_signatures(tx)
        meter_with(self.svm, tx.message, self.pda_derivation_cu)
        res = self.svm.simulate_transaction(tx)
        if isinstance(res, FailedTransactionMetadata):
            meta = res.meta()
            return SimOutcome(error_json(res.err()), list(meta.logs()), meta.compute_units_consumed(), replacement)
        meta = res.meta()
        return SimOutcome(None, list(meta.logs()), meta.compute_units_consumed(), replacement,
                          list(res.post_accounts()))

    def _verify_signatures(self, tx: VersionedTransaction) -> None:
        if not all(tx.verify_with_results()):
            raise ChainRequestError(-32003, "Transaction signature verification failure")

    def send(self, raw: bytes, *, skip_preflight: bool = False) -> str:
        """Execute a wire transaction; returns its signature. Preflight failures raise ChainRequestError(-32002).

        Like a validator: with skip_preflight, a transaction with an unknown/expired blockhash or an already
        processed signature is accepted (signature returned) and silently dropped.
        """
        tx = decode_transaction(raw)
        sig = str(tx.signatures[0])
        self._verify_signatures(tx)
        self.tick()
        if not skip_preflight:
            if sig in self.history:
                already = error_json(TransactionErrorFieldless.AlreadyProcessed)
                raise ChainRequestError(-32002, "Transaction simulation failed: This transaction has already been "
                                        "processed", self._sim_data(already))
            sim = self.simulate(raw)
            if sim.err is not None:
                raise ChainRequestError(-32002, f"Transaction simulation failed: {describe_error(sim.err)}",
                                        self._sim_data(sim.err, sim.logs, sim.units_consumed))
        if sig in self.history or not self.is_blockhash_valid(tx.message.recent_blockhash):
            log.info("dropped transaction %s (duplicate or blockhash not found)", sig)
            return sig
        if self.drop_transactions > 0:
            self.drop_transactions -= 1
            log.info("dropped transaction %s (fault injection)", sig)
            return sig
        keys, w, r = self._all_keys(tx)
        pre = [self._lamports(k) for k in keys]
        meter_with(self.svm, tx.message, self.pda_derivation_cu)
        res = self.svm.send_transaction(tx)
        post = [self._lamports(k) for k in keys]
        if isinstance(res, FailedTransactionMetadata) and res.err() == TransactionErrorFieldless.AlreadyProcessed:
            return sig
        self.touched.update(keys)
        self._record(sig, raw, tx, res, pre, post, w, r)
        self.dirty = True
        return sig

    @staticmethod
    def _sim_data(err: Any, logs: Sequence[str] = (), units: int = 0) -> dict[str, Any]:
        return {"err": err, "logs": list(logs), "accounts": None, "unitsConsumed": units, "returnData": None,
                "innerInstructions": None}

    def _lamports(self, k: Pubkey) -> int:
        acc = self.svm.get_account(k)
        return 0 if acc is None else acc.lamports

    def _record(self, sig: str, raw: bytes, tx: VersionedTransaction | None,
                res: TransactionMetadata | FailedTransactionMetadata, pre: list[int], post: list[int],
                w: Iterable[Pubkey] = (), r: Iterable[Pubkey] = ()) -> None:
        if isinstance(res, FailedTransactionMetadata):
            err, meta = error_json(res.err()), res.meta()
        else:
            err, meta = None, res
        fee = meta.fee()
        if tx is not None and fee == 0 and err is not None:
            fee = LAMPORTS_PER_SIGNATURE * len(tx.signatures) + priority_fee(tx.message)
        self.history[sig] = TxRecord(sig, self.slot, self.now(), raw, err, list(meta.logs()),
                                     meta.compute_units_consumed(), fee, pre, post,
                                     [str(k) for k in w], [str(k) for k in r])
        while len(self.history) > DEFAULT_HISTORY:
            self.history.popitem(last=False)

    def transaction(self, sig: str) -> TxRecord | None:
        return self.history.get(sig)

    def confirmations(self, rec: TxRecord) -> int | None:
        depth = self.tick() - rec.slot
        return None if depth >= DEFAULT_FINALIZED_AFTER_SLOTS else depth

    def fee_for_message(self, message: AnyMessage) -> int:
        return LAMPORTS_PER_SIGNATURE * message.header.num_required_signatures + priority_fee(message)

    # ---- persistence (localchain/chain_state.py) --------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        return chain_state.snapshot(self)

    def save(self, path: Path | None = None) -> None:
        """Write the state file atomically (tmp + fsync + rename + fsync dir)."""
        path = path or self.state_file
        if path is None:
            return
        chain_state.write_state(path, self.snapshot())
        self.dirty = False


def describe_error(err: Any) -> str:
    """Human text for a JSON transaction error, like the validator's preflight message."""
    if isinstance(err, dict) and "InstructionError" in err:
        idx, ierr = err["InstructionError"]
        if isinstance(ierr, dict) and "Custom" in ierr:
            return f"Error processing Instruction {idx}: custom program error: {ierr['Custom']:#x}"
        return f"Error processing Instruction {idx}: {ierr}"
    return str(err)


def close_quietly(chain: LocalChain) -> None:
    with contextlib.suppress(OSError):
        chain.save()
