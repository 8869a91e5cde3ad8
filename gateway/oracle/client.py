"""Submitting interval readings to the GridTokenX oracle over any Solana JSON-RPC URL (solana-py + solders).

The gateway's only chain client (oracle_landing sends and confirms its transactions). It reaches the local
test chain exactly as it reaches devnet.

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

OracleClient (reads, submit, lookup tables) lives here; its parts live beside it in gateway/oracle/: submission,
instructions, packing, landing, errors and authority_key.
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from solana.exceptions import SolanaRpcException
from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Commitment
from solana.rpc.core import RPCException
from solders.address_lookup_table_account import ID as ALT_PROGRAM_ID
from solders.address_lookup_table_account import AddressLookupTable, AddressLookupTableAccount
from solders.compute_budget import set_compute_unit_limit, set_compute_unit_price
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.transaction import VersionedTransaction

from gateway.oracle.authority_key import load_authority_keypair
from gateway.oracle.errors import OracleClientError, TxFailure, parse_tx_error
from gateway.oracle.instructions import (
    DEFAULT_CU_FIRST_READING,
    DEFAULT_CU_NONCE_RANGE,
    DEFAULT_CU_READING,
    create_lookup_table_instruction,
    estimate_compute_units,
    extend_lookup_table_instruction,
    meter_pda,
    submit_instruction,
)
from gateway.oracle.landing import Landing, TxBuilder, land
from gateway.oracle.packing import PACKET_DATA_SIZE, disjoint_wave, pack_submits
from gateway.oracle.submission import Submission, SubmitResult, rejected_before_sending, settled_by_chain_state
from oracle_interface import layout as ol
from oracle_interface.addresses import oracle_data_pda

log = logging.getLogger(__name__)

LOOKUP_TABLE_MAX_ADDRESSES = 256
DEFAULT_POLL_S = 0.25  # signature-status polling interval (a slot is ~0.4 s)
DEFAULT_CU_TABLE_ADMIN = 100_000  # lookup table program (core BPF): measured 22.3k create+extend, 11.8k extend
DEFAULT_EXTEND_CHUNK = 20  # addresses per ExtendLookupTable transaction (fits 1232 bytes with the create ix)
DEFAULT_TABLE_READY_TIMEOUT_S = 30.0  # waiting for the slot after an extension (a few hundred ms normally)
DEFAULT_RPC_TIMEOUT_S = 30.0
MAX_ACCOUNTS_PER_REQUEST = 100  # getMultipleAccounts limit


def rpc_failure_reason(exc: BaseException) -> str | None:
    """"rpc_unreachable" (no answer: connection refused, timeout), "rpc_error" (the RPC answered with an error, or
    the oracle cannot be used) or None (not an RPC failure). For the chain-health metrics."""
    for e in (exc, exc.__cause__):
        if isinstance(e, SolanaRpcException | OSError | TimeoutError):
            return "rpc_unreachable"
    if isinstance(exc, RPCException | OracleClientError):
        return "rpc_error"
    return None


@dataclass
class _Table:
    address: Pubkey
    addresses: list[Pubkey] = field(default_factory=list)

    def account(self) -> AddressLookupTableAccount:
        return AddressLookupTableAccount(self.address, list(self.addresses))


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
        self._oracle_data = oracle_data_pda(self.program_id)[0]
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
            rejected = rejected_before_sending(s, self.error_table)
            if rejected is None:
                todo.append(i)
            else:
                results[i] = rejected
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
            settled = settled_by_chain_state(subs[i], states.get(subs[i].meter_id), self.error_table)
            if settled is None:
                pending.append(i)
            else:
                results[i] = settled
        if not pending:
            return
        await self._ensure_tables([meter_pda(self.program_id, subs[i].meter_id)[0] for i in pending])
        batches = self._pack(subs, pending)
        while batches:
            wave, batches = disjoint_wave(subs, batches)
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
        items = [(meter_pda(self.program_id, subs[i].meter_id)[0], subs[i].meter_id) for i in idx]
        packed = pack_submits(items, where, (self._oracle_data, SYSTEM_PROGRAM_ID), cu_price=bool(self.cu_price))
        out: list[list[int]] = []
        for b in ([idx[p] for p in positions] for positions in packed):
            # the arithmetic is exact; the compiled transaction has the last word
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

    def _builder(self, subs: Sequence[Submission], batch: list[int]) -> TxBuilder:
        return lambda bh: self._build(subs, batch, bh)

    async def _settle(self, subs: Sequence[Submission], batch: list[int], landing: Landing,
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
    async def _land(self, builders: list[TxBuilder]) -> list[Landing]:
        """Sign, send and confirm transactions concurrently, re-signing after blockhash expiry."""
        return await land(self._rpc, builders, commitment=self.commitment, poll_s=self.poll_s, stats=self.stats)

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

