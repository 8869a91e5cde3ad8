"""The oracle client's address lookup tables: created and extended as meters appear (oracle_data, the system
program and each MeterState PDA), so a submit instruction names its accounts with one index byte each instead of
32 bytes. Part of OracleClient (its base class); kept apart to keep each module readable."""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from solana.rpc.async_api import AsyncClient
from solana.rpc.commitment import Commitment, Finalized
from solders.address_lookup_table_account import ID as ALT_PROGRAM_ID
from solders.address_lookup_table_account import AddressLookupTable, AddressLookupTableAccount
from solders.compute_budget import set_compute_unit_limit
from solders.hash import Hash
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.message import MessageV0
from solders.pubkey import Pubkey
from solders.signature import Signature
from solders.system_program import ID as SYSTEM_PROGRAM_ID
from solders.transaction import VersionedTransaction

from gateway.oracle.errors import OracleClientError
from gateway.oracle.instructions import (
    DEFAULT_CU_NONCE_RANGE,
    create_lookup_table_instruction,
    extend_lookup_table_instruction,
)
from gateway.oracle.landing import Landing, TxBuilder

log = logging.getLogger(__name__)

LOOKUP_TABLE_MAX_ADDRESSES = 256
DEFAULT_CU_TABLE_ADMIN = 100_000  # lookup table program (core BPF): measured 22.3k create+extend, 11.8k extend
DEFAULT_EXTEND_CHUNK = 20  # addresses per ExtendLookupTable transaction (fits 1232 bytes with the create ix)
DEFAULT_TABLE_READY_TIMEOUT_S = 30.0  # waiting for the slot after an extension (a few hundred ms normally)


@dataclass
class Table:
    address: Pubkey
    addresses: list[Pubkey] = field(default_factory=list)

    def account(self) -> AddressLookupTableAccount:
        return AddressLookupTableAccount(self.address, list(self.addresses))


class LookupTables:
    """Lookup-table management of OracleClient (which sets these attributes in its __init__)."""

    _rpc: AsyncClient
    authority: Keypair
    commitment: Commitment
    poll_s: float
    _oracle_data: Pubkey
    _nonce: int
    _table_seed: list[Pubkey]
    _tables: list[Table] | None
    _ready_slot: dict[Pubkey, int]
    _table_lock: asyncio.Lock
    _used_recent_slots: set[int]

    async def _land(self, builders: list[TxBuilder]) -> list[Landing]:
        raise NotImplementedError

    @property
    def lookup_tables(self) -> list[str]:
        """Addresses of this client's lookup tables (persist them and pass back as `lookup_tables=`)."""
        return [str(t.address) for t in self._tables or []] or [str(t) for t in self._table_seed]

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
                    slot = (await self._rpc.get_slot(Finalized)).value
                    while slot in self._used_recent_slots:  # one table per (authority, recent_slot)
                        slot -= 1  # still in SlotHashes (512 recent slots)
                    self._used_recent_slots.add(slot)
                    create, address = create_lookup_table_instruction(self.authority.pubkey(),
                                                                      self.authority.pubkey(), slot)
                    table = Table(address)
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

    async def _load_tables(self) -> list[Table]:
        tables: list[Table] = []
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
            tables.append(Table(addr, list(t.addresses)))
        return tables

