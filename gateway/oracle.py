"""Submitting interval readings to the GridTokenX oracle over any Solana JSON-RPC URL (solana-py + solders).

The only gateway module that talks to a chain. It reaches the local test chain exactly as it reaches devnet.

How a batch of submissions becomes transactions:
- Each submission is one `submit_meter_reading` instruction (4 accounts: oracle_data, meter_state, authority,
  system program). Packed into v0 transactions whose non-signer accounts come from address lookup tables that
  this client creates and extends as meters appear (oracle_data, the system program and each MeterState PDA:
  one index byte per account instead of 32 bytes), as many as fit in the 1232-byte packet limit.
- Every transaction starts with SetComputeUnitLimit = estimated CU + a per-transaction nonce, so a re-signed
  or repeated batch is never byte-identical (a validator silently drops duplicates).
- Transactions in flight at the same time never share a meter (ordering per meter is kept).
- A transaction that fails (preflight or on chain) names the failing instruction; that submission is rejected
  with the oracle's error name, the rest are checked with simulateTransaction until clean and resubmitted.
- Blockhash expiry: after lastValidBlockHeight passes without the signature landing (checked once more), the
  batch is re-signed with a fresh blockhash and a new nonce.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Commitment
from solana.rpc.core import RPCException
from solana.rpc.models import TxOpts
from solders.address_lookup_table_account import ID as ALT_PROGRAM_ID
from solders.address_lookup_table_account import (
    AddressLookupTable,
    AddressLookupTableAccount,
    derive_lookup_table_address,
)
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.instruction import AccountMeta, Instruction
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.rpc.responses import SendTransactionPreflightFailureMessage
from solders.signature import Signature
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.transaction import VersionedTransaction
from solders.transaction_status import InstructionErrorCustom, TransactionErrorInstructionError

from gateway import oracle_layout as ol
from gateway.durable_file import write_durably

log = logging.getLogger(__name__)

PACKET_DATA_SIZE = 1232  # max serialized transaction size a validator accepts (IPv6 MTU - headers)
LOOKUP_TABLE_MAX_ADDRESSES = 256
# Compute units per submit_meter_reading. Measured on localchain/program/oracle.so: 13,302 for a meter's first
# reading (creates the account) and 11,732 after when the MeterState bump is 255, plus 1,500 per bump-search step
# (find_program_address tries 255, 254, ...): over 300 meters the mean is ~14.8k first / ~13.3k after. The real
# Anchor program measured ~16,050 / ~13,376. The estimate covers both with a margin; the limit only caps.
DEFAULT_CU_FIRST_READING = 17_000  # creates the MeterState account (CPI to the system program)
DEFAULT_CU_READING = 14_500
DEFAULT_CU_PER_BUMP_STEP = 1_600
DEFAULT_CU_BASE = 1_000  # compute-budget instructions and transaction overhead
DEFAULT_CU_NONCE_RANGE = 997  # added to the limit to make every transaction unique
MAX_CU_PER_TX = 1_400_000
DEFAULT_POLL_S = 0.25  # signature-status polling interval (a slot is ~0.4 s)
DEFAULT_MAX_SIGNINGS = 4  # blockhash expiries tolerated per batch before reporting "retry"
DEFAULT_CU_TABLE_ADMIN = 100_000  # lookup table program (core BPF): measured 22.3k create+extend, 11.8k extend
DEFAULT_EXTEND_CHUNK = 20  # addresses per ExtendLookupTable transaction (fits 1232 bytes with the create ix)
DEFAULT_TABLE_READY_TIMEOUT_S = 30.0  # waiting for the slot after an extension (a few hundred ms normally)
DEFAULT_RPC_TIMEOUT_S = 30.0
DEFAULT_PDA_CACHE = 65_536  # meter PDAs kept (32 + a few bytes each)
MAX_ACCOUNTS_PER_REQUEST = 100  # getMultipleAccounts limit
MAX_SIGNATURES_PER_REQUEST = 256  # getSignatureStatuses limit


@dataclass(frozen=True)
class Submission:
    key: str  # unique, e.g. f"{meter_id}:{reading_timestamp}"
    meter_id: str
    produced_wh: int
    consumed_wh: int
    reading_timestamp: int
    zone_id: int


@dataclass(frozen=True)
class SubmitResult:
    key: str
    status: Literal["confirmed", "rejected", "retry"]
    signature: str | None
    error: str | None  # error NAME e.g. "RateLimitExceeded"; code in `code`
    code: int | None = None


class OracleClientError(Exception):
    """The oracle cannot be used (not initialized, unreadable account, RPC unreachable)."""


# ---- authority key file -------------------------------------------------------------------------------------
def load_authority_keypair(path: str | Path) -> Keypair:
    """The chain_bridge keypair: solana-keygen JSON (64-byte array) or 64 hex chars of an Ed25519 seed."""
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise OracleClientError(f"{p}: authority key file missing (create one with solana-keygen or "
                                "`gridmeter gateway keygen`)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise OracleClientError(f"{p}: cannot read authority key file ({e})") from e
    if st.st_mode & 0o077:
        raise OracleClientError(f"{p}: readable by group/other (mode {st.st_mode & 0o777:o}); chmod 600 it")
    try:
        if text.startswith("["):
            raw = bytes(json.loads(text))
            if len(raw) != 64:
                raise ValueError("expected 64 bytes")
            kp = Keypair.from_bytes(raw)
        else:
            seed = bytes.fromhex(text)
            if len(seed) != 32:
                raise ValueError("expected 64 hex characters")
            kp = Keypair.from_seed(seed)
    except ValueError as e:
        raise OracleClientError(f"{p}: not a keypair file ({e}); expected solana-keygen JSON or a hex seed") from e
    return kp


def create_authority_key_file(path: str | Path, *, overwrite: bool = False) -> Keypair:
    """Write a new keypair in solana-keygen JSON format, mode 0600 (tmp + fsync + rename + fsync dir)."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise OracleClientError(f"{p}: already exists (refusing to overwrite a key)")
    kp = Keypair()
    try:
        write_durably(p, json.dumps(list(bytes(kp))).encode() + b"\n", 0o600)
    except OSError as exc:
        raise OracleClientError(f"{p}: cannot write authority key file ({exc.strerror or exc})") from exc
    return kp


# ---- instructions (pure) ------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=DEFAULT_PDA_CACHE)
def meter_pda(program_id: Pubkey, meter_id: str) -> tuple[Pubkey, int]:
    """MeterState PDA and bump (cached: the bump search is the costly part of packing)."""
    return ol.meter_state_pda(program_id, meter_id)


@functools.lru_cache(maxsize=16)
def oracle_pda(program_id: Pubkey) -> Pubkey:
    return ol.oracle_data_pda(program_id)[0]


def submit_instruction(program_id: Pubkey, authority: Pubkey, sub: Submission) -> Instruction:
    oracle_data = oracle_pda(program_id)
    meter_state, _ = meter_pda(program_id, sub.meter_id)
    return Instruction(
        program_id,
        ol.submit_meter_reading_data(sub.meter_id, sub.produced_wh, sub.consumed_wh, sub.reading_timestamp,
                                     sub.zone_id),
        [
            AccountMeta(oracle_data, is_signer=False, is_writable=False),
            AccountMeta(meter_state, is_signer=False, is_writable=True),
            AccountMeta(authority, is_signer=True, is_writable=True),
            AccountMeta(SYSTEM_PROGRAM_ID, is_signer=False, is_writable=False),
        ],
    )


def create_lookup_table_instruction(authority: Pubkey, payer: Pubkey, recent_slot: int) -> tuple[Instruction, Pubkey]:
    table, bump = derive_lookup_table_address(authority, recent_slot)
    ix = Instruction(ALT_PROGRAM_ID, struct.pack("<IQB", 0, recent_slot, bump), [
        AccountMeta(table, is_signer=False, is_writable=True),
        AccountMeta(authority, is_signer=True, is_writable=False),
        AccountMeta(payer, is_signer=True, is_writable=True),
        AccountMeta(SYSTEM_PROGRAM_ID, is_signer=False, is_writable=False),
    ])
    return ix, table


def extend_lookup_table_instruction(table: Pubkey, authority: Pubkey, payer: Pubkey,
                                    addresses: Sequence[Pubkey]) -> Instruction:
    data = struct.pack("<IQ", 2, len(addresses)) + b"".join(bytes(a) for a in addresses)
    return Instruction(ALT_PROGRAM_ID, data, [
        AccountMeta(table, is_signer=False, is_writable=True),
        AccountMeta(authority, is_signer=True, is_writable=False),
        AccountMeta(payer, is_signer=True, is_writable=True),
        AccountMeta(SYSTEM_PROGRAM_ID, is_signer=False, is_writable=False),
    ])


# ---- wire-format size (pure) --------------------------------------------------------------------------------
def _compact_len(n: int) -> int:
    return 1 if n < 0x80 else 2 if n < 0x4000 else 3


def _ix_size(n_accounts: int, data_len: int) -> int:
    return 1 + _compact_len(n_accounts) + n_accounts + _compact_len(data_len) + data_len


def submit_data_len(meter_id: str) -> int:
    return 8 + 4 + len(meter_id.encode("utf-8")) + 8 + 8 + 8 + 4


def submit_tx_size(meter_ids: Sequence[str], *, with_lookup_tables: bool = True, cu_price: bool = False) -> int:
    """Serialized size of one transaction carrying a submit for each id (one signer: the authority).

    With lookup tables (v0): static keys = authority, ComputeBudget program, oracle program; oracle_data,
    system program and every MeterState PDA come from a single table. Without: a legacy transaction with every
    account as a 32-byte static key.
    """
    distinct = list(dict.fromkeys(meter_ids))
    ixs = [_ix_size(0, 5)]  # SetComputeUnitLimit
    if cu_price:
        ixs.append(_ix_size(0, 9))
    ixs += [_ix_size(4, submit_data_len(m)) for m in meter_ids]
    if with_lookup_tables:
        n_static = 3
        lookups = 32 + _compact_len(len(distinct)) + len(distinct) + _compact_len(2) + 2
        msg = 1 + 3 + _compact_len(n_static) + 32 * n_static + 32 + _compact_len(len(ixs)) + sum(ixs)
        msg += _compact_len(1) + lookups
    else:
        n_static = 5 + len(distinct)  # authority, oracle_data, system, ComputeBudget, program + PDAs
        msg = 3 + _compact_len(n_static) + 32 * n_static + 32 + _compact_len(len(ixs)) + sum(ixs)
    return _compact_len(1) + 64 + msg


def _v0_size(n_static: int, ix_sizes: list[int], n_submit_ixs: int, tables: dict[int, list[int]]) -> int:
    """v0 transaction size, one signature. ix_sizes: the fixed instructions then one entry holding the summed
    size of the n_submit_ixs submits; tables: per used table [writable count, readonly count]."""
    n_ix = len(ix_sizes) - 1 + n_submit_ixs
    msg = 1 + 3 + _compact_len(n_static) + 32 * n_static + 32 + _compact_len(n_ix) + sum(ix_sizes)
    msg += _compact_len(len(tables)) + sum(32 + _compact_len(w) + w + _compact_len(r) + r for w, r in tables.values())
    return _compact_len(1) + 64 + msg


def max_submits_per_tx(meter_ids: Sequence[str], with_lookup_tables: bool = True) -> int:
    """How many submit_meter_reading instructions for these meter ids (taken in order, repeating the list
    if it is short) fit in one 1232-byte transaction, at best (all addresses in one lookup table)."""
    if not meter_ids:
        raise ValueError("max_submits_per_tx: no meter ids")
    n = 0
    while True:
        ids = [meter_ids[i % len(meter_ids)] for i in range(n + 1)]
        if submit_tx_size(ids, with_lookup_tables=with_lookup_tables) > PACKET_DATA_SIZE:
            return n
        n += 1


def estimate_compute_units(program_id: Pubkey, subs: Sequence[Submission], existing: set[str],
                           cu_first: int = DEFAULT_CU_FIRST_READING, cu_after: int = DEFAULT_CU_READING) -> int:
    total = DEFAULT_CU_BASE
    seen: set[str] = set()
    for s in subs:
        _, bump = meter_pda(program_id, s.meter_id)
        first = s.meter_id not in existing and s.meter_id not in seen
        total += (cu_first if first else cu_after) + (255 - bump) * DEFAULT_CU_PER_BUMP_STEP
        seen.add(s.meter_id)
    return min(total, MAX_CU_PER_TX - DEFAULT_CU_NONCE_RANGE)


# ---- errors -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TxFailure:
    """A transaction error: the failing instruction (if any), its custom code and a readable name."""

    index: int | None
    code: int | None
    name: str

    @property
    def is_oracle_rejection(self) -> bool:
        return self.code is not None and self.code in ol.ERRORS


def parse_tx_error(err: Any, table: dict[int, str] | None = None) -> TxFailure:
    if isinstance(err, TransactionErrorInstructionError):
        inner = err.err
        if isinstance(inner, InstructionErrorCustom):
            return TxFailure(err.index, inner.code, ol.error_name(inner.code, table))
        return TxFailure(err.index, None, str(inner).split(".")[-1].split("(")[0])
    return TxFailure(None, None, str(err).split(".")[-1])


# ---- client -------------------------------------------------------------------------------------------------
@dataclass
class _Table:
    address: Pubkey
    addresses: list[Pubkey] = field(default_factory=list)

    def account(self) -> AddressLookupTableAccount:
        return AddressLookupTableAccount(self.address, list(self.addresses))


@dataclass
class _Landing:
    """Outcome of getting one batch on chain: landed (slot, err), preflight-refused (err) or unknown."""

    signature: str | None
    landed: bool
    err: Any = None
    unknown: str | None = None  # why the outcome is unknown (RPC errors, expiry limit)


class OracleClient:
    def __init__(
        self,
        rpc_url: str,
        program_id: str,
        authority: Keypair,
        *,
        commitment: Commitment = "confirmed",
        lookup_tables: Sequence[str] = (),
        error_table: dict[int, str] | None = None,
        cu_first_reading: int = DEFAULT_CU_FIRST_READING,
        cu_reading: int = DEFAULT_CU_READING,
        cu_price_micro_lamports: int = 0,
        poll_s: float = DEFAULT_POLL_S,
        rpc_timeout_s: float = DEFAULT_RPC_TIMEOUT_S,
    ) -> None:
        self.rpc_url = rpc_url
        self.program_id = Pubkey.from_string(program_id)
        self.authority = authority
        self.commitment: Commitment = commitment
        self.error_table = error_table
        self.cu_first_reading = cu_first_reading
        self.cu_reading = cu_reading
        self.cu_price = cu_price_micro_lamports
        self.poll_s = poll_s
        self._rpc = AsyncClient(rpc_url, commitment=commitment, timeout=rpc_timeout_s)
        self._oracle_data = ol.oracle_data_pda(self.program_id)[0]
        self._table_seed = [Pubkey.from_string(t) for t in lookup_tables]
        self._tables: list[_Table] | None = None
        self._ready_slot: dict[Pubkey, int] = {}  # address -> first slot it resolves from its table
        self._existing: set[str] = set()  # meters known to have a MeterState
        self._nonce = random.randrange(DEFAULT_CU_NONCE_RANGE)
        self._table_lock = asyncio.Lock()
        self._submit_lock = asyncio.Lock()  # one submit at a time: per-meter order across transactions
        self._used_recent_slots: set[int] = set()
        self.stats = {"transactions": 0, "failed_transactions": 0, "resigned": 0, "simulations": 0}

    @classmethod
    def from_key_file(cls, rpc_url: str, program_id: str, key_file: str | Path, **kw: Any) -> OracleClient:
        return cls(rpc_url, program_id, load_authority_keypair(key_file), **kw)

    async def close(self) -> None:
        await self._rpc.close()

    async def __aenter__(self) -> OracleClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    @property
    def lookup_tables(self) -> list[str]:
        """Addresses of this client's lookup tables (persist them and pass back as `lookup_tables=`)."""
        return [str(t.address) for t in self._tables or []] or [str(t) for t in self._table_seed]

    # ---- reads --------------------------------------------------------------------------------------------
    async def fetch_config(self) -> ol.OracleConfig:
        try:
            resp = await self._rpc.get_account_info(self._oracle_data, encoding="base64")
        except (SolanaRpcException, RPCException) as e:
            raise OracleClientError(f"{self.rpc_url}: cannot read oracle_data {self._oracle_data}: {e}") from e
        if resp.value is None:
            raise OracleClientError(f"oracle {self.program_id} not initialized: no account {self._oracle_data}")
        if resp.value.owner != self.program_id:
            raise OracleClientError(f"{self._oracle_data} is owned by {resp.value.owner}, not {self.program_id}")
        try:
            return ol.decode_oracle_data(bytes(resp.value.data))
        except ol.LayoutError as e:
            raise OracleClientError(f"oracle_data {self._oracle_data}: {e}") from e

    async def fetch_meter_states(self, meter_ids: Sequence[str]) -> dict[str, ol.MeterState | None]:
        out: dict[str, ol.MeterState | None] = {}
        ids = [m for m in dict.fromkeys(meter_ids) if len(m.encode("utf-8")) <= ol.MAX_METER_ID_SEED]
        for m in meter_ids:
            out[m] = None
        for i in range(0, len(ids), MAX_ACCOUNTS_PER_REQUEST):
            chunk = ids[i : i + MAX_ACCOUNTS_PER_REQUEST]
            keys = [meter_pda(self.program_id, m)[0] for m in chunk]
            try:
                resp = await self._rpc.get_multiple_accounts(keys, encoding="base64")
            except (SolanaRpcException, RPCException) as e:
                raise OracleClientError(f"{self.rpc_url}: getMultipleAccounts failed: {e}") from e
            for m, acc in zip(chunk, resp.value, strict=True):
                if acc is None or acc.owner != self.program_id:
                    continue
                try:
                    out[m] = ol.decode_meter_state(bytes(acc.data))
                except ol.LayoutError as e:
                    log.error("MeterState of %s unreadable: %s", m, e)
                    continue
                self._existing.add(m)
        return out

    # ---- submit -------------------------------------------------------------------------------------------
    async def submit(self, subs: Sequence[Submission]) -> list[SubmitResult]:
        """One result per submission, same order.

        confirmed: on chain at the client's commitment (signature None if it was already on chain before this
        call: same timestamp and values as the meter's latest state). rejected: the oracle refused it (error =
        the oracle's error name, code = its custom code) or it can never be valid; do not resend as is.
        retry: not known to be on chain (RPC down, blockhash expiries, non-oracle errors); reconcile with
        fetch_meter_states and resend later. A submission older than the meter's latest on-chain reading is
        rejected as OutdatedReading without sending (the chain would refuse it).
        """
        results: dict[int, SubmitResult] = {}
        todo: list[int] = []
        for i, s in enumerate(subs):
            problem = _invalid(s)
            if problem is not None:
                name, code = problem
                if code is not None:  # this deployment's number for the name
                    code = {v: k for k, v in (self.error_table or ol.ERRORS).items()}.get(name)
                results[i] = SubmitResult(s.key, "rejected", None, name, code)
            else:
                todo.append(i)
        if todo:
            try:
                async with self._submit_lock:
                    await self._submit(subs, todo, results)
            except (OracleClientError, SolanaRpcException, RPCException, OSError, ValueError) as e:
                log.error("submit: %s: %s", type(e).__name__, e)
                for i in todo:
                    results.setdefault(i, SubmitResult(subs[i].key, "retry", None, f"RpcError: {e}"))
        return [results[i] for i in range(len(subs))]

    async def _submit(self, subs: Sequence[Submission], todo: list[int], results: dict[int, SubmitResult]) -> None:
        # Chain state first: idempotent resubmission and which meters still need their account created.
        states = await self.fetch_meter_states([subs[i].meter_id for i in todo])
        pending: list[int] = []
        for i in todo:
            s, st = subs[i], states.get(subs[i].meter_id)
            if st is not None and s.reading_timestamp == st.last_reading_timestamp and (
                    s.produced_wh, s.consumed_wh) == (st.energy_produced, st.energy_consumed):
                results[i] = SubmitResult(s.key, "confirmed", None, None)  # already on chain (resubmission)
            elif st is not None and s.reading_timestamp <= st.last_reading_timestamp:
                code = {v: k for k, v in (self.error_table or ol.ERRORS).items()}.get("OutdatedReading")
                results[i] = SubmitResult(s.key, "rejected", None, "OutdatedReading", code)
            else:
                pending.append(i)
        if not pending:
            return
        await self._ensure_tables([meter_pda(self.program_id, subs[i].meter_id)[0] for i in pending])
        batches = self._pack(subs, pending)
        while batches:
            wave, batches = _disjoint_wave(subs, batches)
            landings = await self._land([self._builder(subs, b) for b in wave])
            for batch, landing in zip(wave, landings, strict=True):
                again = await self._settle(subs, batch, landing, results)
                if again:
                    batches.insert(0, again)

    def _pack(self, subs: Sequence[Submission], idx: list[int]) -> list[list[int]]:
        """Greedy: consecutive submissions per transaction while it fits 1232 bytes (wire-format arithmetic,
        then each compiled transaction is checked once)."""
        where: dict[Pubkey, int] = {}  # address -> first table holding it (what try_compile picks)
        for n, t in enumerate(self._tables or []):
            for a in t.addresses:
                where.setdefault(a, n)
        fixed_ixs = [_ix_size(0, 5)] + ([_ix_size(0, 9)] if self.cu_price else [])

        def size(pdas: set[Pubkey], n: int, ix_bytes: int) -> int:
            tables: dict[int, list[int]] = {}
            for ro in (self._oracle_data, SYSTEM_PROGRAM_ID):
                tables.setdefault(where[ro], [0, 0])[1] += 1
            for p in pdas:
                tables.setdefault(where[p], [0, 0])[0] += 1
            return _v0_size(3, [*fixed_ixs, ix_bytes], n, tables)

        batches: list[list[int]] = []
        cur: list[int] = []
        pdas: set[Pubkey] = set()
        ix_bytes = 0
        for i in idx:
            pda = meter_pda(self.program_id, subs[i].meter_id)[0]
            add = _ix_size(4, submit_data_len(subs[i].meter_id))
            if cur and size(pdas | {pda}, len(cur) + 1, ix_bytes + add) > PACKET_DATA_SIZE:
                batches.append(cur)
                cur, pdas, ix_bytes = [], set(), 0
            cur.append(i)
            pdas.add(pda)
            ix_bytes += add
        if cur:
            batches.append(cur)
        out: list[list[int]] = []
        for b in batches:  # the arithmetic is exact; the compiled transaction has the last word
            while len(b) > 1 and self._tx_size(subs, b) > PACKET_DATA_SIZE:
                log.error("packing arithmetic disagrees with the compiled size: splitting a transaction")
                out.append(b[:-1])
                b = b[-1:]
            out.append(b)
        return out

    def _tx_size(self, subs: Sequence[Submission], batch: list[int]) -> int:
        return len(bytes(self._build(subs, batch, Hash.default())))

    def _instructions(self, subs: Sequence[Submission], batch: list[int]) -> list[Instruction]:
        self._nonce = (self._nonce + 1) % DEFAULT_CU_NONCE_RANGE
        cu = estimate_compute_units(self.program_id, [subs[i] for i in batch], self._existing,
                                    self.cu_first_reading, self.cu_reading) + self._nonce
        ixs = [set_compute_unit_limit(cu)]
        if self.cu_price:
            ixs.append(set_compute_unit_price(self.cu_price))
        ixs += [submit_instruction(self.program_id, self.authority.pubkey(), subs[i]) for i in batch]
        return ixs

    def _build(self, subs: Sequence[Submission], batch: list[int], blockhash: Hash) -> VersionedTransaction:
        ixs = self._instructions(subs, batch)
        msg = MessageV0.try_compile(self.authority.pubkey(), ixs, [t.account() for t in self._tables or []],
                                    blockhash)
        return VersionedTransaction(msg, [self.authority])

    def _builder(self, subs: Sequence[Submission], batch: list[int]) -> Callable[[Hash], VersionedTransaction]:
        return lambda bh: self._build(subs, batch, bh)

    async def _settle(self, subs: Sequence[Submission], batch: list[int], landing: _Landing,
                      results: dict[int, SubmitResult]) -> list[int]:
        """Record results for a landed/refused batch; returns the submissions to send again (may be empty)."""
        if landing.unknown is not None:
            for i in batch:
                results[i] = SubmitResult(subs[i].key, "retry", landing.signature, landing.unknown)
            return []
        if landing.landed and landing.err is None:
            for i in batch:
                results[i] = SubmitResult(subs[i].key, "confirmed", landing.signature, None)
                self._existing.add(subs[i].meter_id)
            return []
        self.stats["failed_transactions"] += 1
        rest = await self._drop_failing(subs, batch, parse_tx_error(landing.err, self.error_table), results)
        return await self._isolate(subs, rest, results) if rest else []

    def _first_submit_index(self) -> int:
        return 2 if self.cu_price else 1

    async def _drop_failing(self, subs: Sequence[Submission], batch: list[int], f: TxFailure,
                            results: dict[int, SubmitResult]) -> list[int]:
        pos = None if f.index is None else f.index - self._first_submit_index()
        if pos is None or not 0 <= pos < len(batch):
            log.warning("transaction failed without a submit instruction to blame: %s", f.name)
            if f.name in ("ComputationalBudgetExceeded", "ProgramFailedToComplete"):
                self.cu_first_reading, self.cu_reading = self.cu_first_reading * 2, self.cu_reading * 2
            for i in batch:
                results[i] = SubmitResult(subs[i].key, "retry", None, f.name, f.code)
            return []
        bad = batch[pos]
        status: Literal["rejected", "retry"] = "rejected" if f.is_oracle_rejection else "retry"
        log.warning("submission %s rejected by the oracle: %s (%s)", subs[bad].key, f.name, f.code)
        results[bad] = SubmitResult(subs[bad].key, status, None, f.name, f.code)
        return [i for i in batch if i != bad]

    async def _isolate(self, subs: Sequence[Submission], batch: list[int],
                       results: dict[int, SubmitResult]) -> list[int]:
        """Simulate the remaining batch, dropping failing instructions one at a time, until it is clean."""
        while batch:
            tx = self._build(subs, batch, Hash.default())
            self.stats["simulations"] += 1
            resp = await self._rpc.simulate_transaction(tx, replace_recent_blockhash=True)
            if resp.value.err is None:
                return batch
            f = parse_tx_error(resp.value.err, self.error_table)
            if f.index is None:
                return batch  # not an instruction failure (e.g. account in use): let sending decide
            before = len(batch)
            batch = await self._drop_failing(subs, batch, f, results)
            if len(batch) >= before:
                return batch
        return batch

    # ---- getting transactions on chain --------------------------------------------------------------------
    async def _land(self, builders: list[Callable[[Hash], VersionedTransaction]]) -> list[_Landing]:
        """Sign, send and confirm transactions concurrently, re-signing after blockhash expiry."""
        out: list[_Landing | None] = [None] * len(builders)
        waiting = list(range(len(builders)))
        for _attempt in range(DEFAULT_MAX_SIGNINGS):
            if not waiting:
                break
            bh_resp = await self._rpc.get_latest_blockhash(self.commitment)
            blockhash, last_valid = bh_resp.value.blockhash, bh_resp.value.last_valid_block_height
            sent: dict[int, Signature] = {}
            for k in waiting:
                tx = builders[k](blockhash)
                try:
                    await self._rpc.send_raw_transaction(bytes(tx), TxOpts(skip_preflight=False,
                                                                           preflight_commitment=self.commitment))
                    self.stats["transactions"] += 1
                    sent[k] = tx.signatures[0]
                except RPCException as e:
                    err = e.args[0] if e.args else None
                    if isinstance(err, SendTransactionPreflightFailureMessage):
                        sim_err = err.data.err
                        if sim_err is not None and "BlockhashNotFound" not in str(sim_err):
                            out[k] = _Landing(None, False, sim_err)  # refused by simulation
                        continue  # blockhash expired between fetch and send: re-sign next attempt
                    out[k] = _Landing(str(tx.signatures[0]), False, unknown=f"RpcError: {err}")
                except SolanaRpcException as e:
                    # transport error: it may or may not have reached the node; its status (or the blockhash
                    # expiring without it) decides, like any other sent transaction
                    log.warning("sendTransaction %s: %s", tx.signatures[0], e)
                    sent[k] = tx.signatures[0]
            statuses = await self._await_statuses(sent, last_valid)
            for k, sig in sent.items():
                st = statuses.get(k)
                if st is not None:
                    out[k] = _Landing(str(sig), True, st.err)
            waiting = [k for k in waiting if out[k] is None]
            if waiting:
                self.stats["resigned"] += len(waiting)
                log.warning("%d transaction(s) not landed before blockhash expiry: re-signing", len(waiting))
        return [o if o is not None else _Landing(None, False, unknown="BlockhashExpired: not landed after "
                                                  f"{DEFAULT_MAX_SIGNINGS} signings") for o in out]

    async def _await_statuses(self, sent: dict[int, Signature], last_valid: int) -> dict[int, Any]:
        """Poll until every signature reached the commitment or the blockhash expired (then check once more)."""
        found: dict[int, Any] = {}
        rank = {"processed": 0, "confirmed": 1, "finalized": 2}[str(self.commitment)]
        expired = False
        while len(found) < len(sent):
            keys = [k for k in sent if k not in found]
            for j in range(0, len(keys), MAX_SIGNATURES_PER_REQUEST):
                chunk = keys[j : j + MAX_SIGNATURES_PER_REQUEST]
                resp = await self._rpc.get_signature_statuses([sent[k] for k in chunk])
                for k, st in zip(chunk, resp.value, strict=True):
                    if st is not None and _status_rank(st) >= rank:
                        found[k] = st
            if expired or len(found) == len(sent):
                break
            height = (await self._rpc.get_block_height(self.commitment)).value
            expired = height > last_valid  # one more status check after expiry, then give up on them
            if not expired:
                await asyncio.sleep(self.poll_s)
        return found

    # ---- address lookup tables ----------------------------------------------------------------------------
    async def _ensure_tables(self, meter_states: Sequence[Pubkey]) -> None:
        async with self._table_lock:
            if self._tables is None:
                self._tables = await self._load_tables()
            have = {a for t in self._tables for a in t.addresses}
            missing = [a for a in dict.fromkeys([self._oracle_data, SYSTEM_PROGRAM_ID, *meter_states])
                       if a not in have]
            while missing:
                table = self._tables[-1] if self._tables and len(self._tables[-1].addresses) < \
                    LOOKUP_TABLE_MAX_ADDRESSES else None
                room = LOOKUP_TABLE_MAX_ADDRESSES - (len(table.addresses) if table else 0)
                chunk, missing = missing[: min(room, DEFAULT_EXTEND_CHUNK)], missing[min(room, DEFAULT_EXTEND_CHUNK):]
                if table is None:
                    slot = (await self._rpc.get_slot("finalized")).value
                    while slot in self._used_recent_slots:  # one table per (authority, recent_slot)
                        slot -= 1  # still in SlotHashes (512 recent slots)
                    self._used_recent_slots.add(slot)
                    create, address = create_lookup_table_instruction(self.authority.pubkey(),
                                                                      self.authority.pubkey(), slot)
                    table = _Table(address)
                    await self._admin_tx([create, self._extend_ix(address, chunk)], f"create lookup table {address}")
                    self._tables.append(table)
                else:
                    await self._admin_tx([self._extend_ix(table.address, chunk)], f"extend {table.address}")
                table.addresses.extend(chunk)
            await self._wait_ready([a for t in self._tables for a in t.addresses])

    def _extend_ix(self, table: Pubkey, addresses: Sequence[Pubkey]) -> Instruction:
        return extend_lookup_table_instruction(table, self.authority.pubkey(), self.authority.pubkey(), addresses)

    async def _admin_tx(self, ixs: list[Instruction], what: str) -> None:
        def build(bh: Hash) -> VersionedTransaction:
            self._nonce = (self._nonce + 1) % DEFAULT_CU_NONCE_RANGE
            limit = set_compute_unit_limit(DEFAULT_CU_TABLE_ADMIN + self._nonce)
            msg = MessageV0.try_compile(self.authority.pubkey(), [limit, *ixs], [], bh)
            return VersionedTransaction(msg, [self.authority])

        (landing,) = await self._land([build])
        if landing.unknown is not None or not landing.landed or landing.err is not None:
            raise OracleClientError(f"{what}: {landing.unknown or landing.err}")
        st = (await self._rpc.get_signature_statuses([Signature.from_string(landing.signature or "")])).value[0]
        slot = st.slot if st is not None else (await self._rpc.get_slot(self.commitment)).value
        for ix in ixs:
            if bytes(ix.data)[:4] == struct.pack("<I", 2):
                for k in range(12, len(ix.data), 32):
                    self._ready_slot[Pubkey.from_bytes(bytes(ix.data)[k : k + 32])] = slot + 1
        log.info("%s (slot %d)", what, slot)

    async def _wait_ready(self, addresses: Sequence[Pubkey]) -> None:
        need = max((self._ready_slot.get(a, 0) for a in addresses), default=0)
        if need == 0:
            return
        deadline = asyncio.get_running_loop().time() + DEFAULT_TABLE_READY_TIMEOUT_S
        while (await self._rpc.get_slot(self.commitment)).value < need:
            if asyncio.get_running_loop().time() > deadline:
                raise OracleClientError(f"lookup table not usable: slot {need} not reached")
            await asyncio.sleep(self.poll_s)
        for a in addresses:
            self._ready_slot.pop(a, None)

    async def _load_tables(self) -> list[_Table]:
        tables: list[_Table] = []
        if not self._table_seed:
            return tables
        resp = await self._rpc.get_multiple_accounts(self._table_seed, encoding="base64")
        for addr, acc in zip(self._table_seed, resp.value, strict=True):
            if acc is None or acc.owner != ALT_PROGRAM_ID:
                log.warning("lookup table %s not found on chain: ignored", addr)
                continue
            t = AddressLookupTable.deserialize(bytes(acc.data))
            if t.meta.authority != self.authority.pubkey():
                log.warning("lookup table %s belongs to %s: ignored", addr, t.meta.authority)
                continue
            tables.append(_Table(addr, list(t.addresses)))
        return tables


def _status_rank(st: Any) -> int:
    cs = st.confirmation_status
    if cs is None:
        return 2  # a rooted transaction reports no confirmation status
    return {"Processed": 0, "Confirmed": 1, "Finalized": 2}.get(str(cs).split(".")[-1], 0)


def _invalid(s: Submission) -> tuple[str, int | None] | None:
    """Submissions the chain cannot take in any state: rejected before sending (name, oracle code)."""
    if len(s.meter_id.encode("utf-8")) > ol.MAX_METER_ID_SEED:
        return "MeterIdTooLong", ol.ERROR_CODES["MeterIdTooLong"]
    if not s.meter_id:
        return "InvalidSubmission: empty meter_id", None
    for name, v, lo, hi in (("produced_wh", s.produced_wh, 0, ol.U64_MAX),
                            ("consumed_wh", s.consumed_wh, 0, ol.U64_MAX),
                            ("reading_timestamp", s.reading_timestamp, -(2**63), 2**63 - 1),
                            ("zone_id", s.zone_id, -(2**31), 2**31 - 1)):
        if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
            return f"InvalidSubmission: {name} out of range", None
    return None


def _disjoint_wave(subs: Sequence[Submission], batches: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """Leading batches that share no meter (sent concurrently); the rest waits for them."""
    wave: list[list[int]] = []
    meters: set[str] = set()
    for n, b in enumerate(batches):
        ms = {subs[i].meter_id for i in b}
        if ms & meters:
            return wave, batches[n:]
        wave.append(b)
        meters |= ms
    return wave, []


__all__ = [
    "OracleClient",
    "OracleClientError",
    "Submission",
    "SubmitResult",
    "create_authority_key_file",
    "load_authority_keypair",
    "max_submits_per_tx",
    "parse_tx_error",
    "submit_tx_size",
]
