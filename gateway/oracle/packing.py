"""How many oracle submissions fit in one transaction, and how a batch is cut into transactions and waves (pure).

Wire-format arithmetic for a one-signer transaction of submit_meter_reading instructions (legacy, or v0 with
the non-signer accounts in address lookup tables: one index byte per account instead of 32 bytes), checked
against real serialization in tests/unit/test_oracle_client_packing.py. The client compiles each packed
transaction once more and has the last word.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from gateway.oracle.submission import Submission

PACKET_DATA_SIZE = 1232  # max serialized transaction size a validator accepts (IPv6 MTU - headers)
V0_STATIC_KEYS = 3  # with lookup tables: authority, ComputeBudget program, oracle program


def compact_len(n: int) -> int:
    """Bytes of Solana's compact-u16 length prefix."""
    return 1 if n < 0x80 else 2 if n < 0x4000 else 3


def ix_size(n_accounts: int, data_len: int) -> int:
    """Bytes of one compiled instruction (program index, account indexes, data)."""
    return 1 + compact_len(n_accounts) + n_accounts + compact_len(data_len) + data_len


def compute_budget_ix_sizes(cu_price: bool) -> list[int]:
    """SetComputeUnitLimit (u32) and, with a priority fee, SetComputeUnitPrice (u64)."""
    return [ix_size(0, 5)] + ([ix_size(0, 9)] if cu_price else [])


def submit_data_len(meter_id: str) -> int:
    return 8 + 4 + len(meter_id.encode("utf-8")) + 8 + 8 + 8 + 4


def submit_tx_size(meter_ids: Sequence[str], *, with_lookup_tables: bool = True, cu_price: bool = False) -> int:
    """Serialized size of one transaction carrying a submit for each id (one signer: the authority).

    With lookup tables (v0): static keys = authority, ComputeBudget program, oracle program; oracle_data,
    system program and every MeterState PDA come from a single table. Without: a legacy transaction with every
    account as a 32-byte static key.
    """
    distinct = list(dict.fromkeys(meter_ids))
    ixs = compute_budget_ix_sizes(cu_price)
    ixs += [ix_size(4, submit_data_len(m)) for m in meter_ids]
    if with_lookup_tables:
        n_static = V0_STATIC_KEYS
        lookups = 32 + compact_len(len(distinct)) + len(distinct) + compact_len(2) + 2
        msg = 1 + 3 + compact_len(n_static) + 32 * n_static + 32 + compact_len(len(ixs)) + sum(ixs)
        msg += compact_len(1) + lookups
    else:
        n_static = 5 + len(distinct)  # authority, oracle_data, system, ComputeBudget, program + PDAs
        msg = 3 + compact_len(n_static) + 32 * n_static + 32 + compact_len(len(ixs)) + sum(ixs)
    return compact_len(1) + 64 + msg


def v0_size(n_static: int, ix_sizes: list[int], n_submit_ixs: int, tables: dict[int, list[int]]) -> int:
    """v0 transaction size, one signature. ix_sizes: the fixed instructions then one entry holding the summed
    size of the n_submit_ixs submits; tables: per used table [writable count, readonly count]."""
    n_ix = len(ix_sizes) - 1 + n_submit_ixs
    msg = 1 + 3 + compact_len(n_static) + 32 * n_static + 32 + compact_len(n_ix) + sum(ix_sizes)
    msg += compact_len(len(tables)) + sum(32 + compact_len(w) + w + compact_len(r) + r for w, r in tables.values())
    return compact_len(1) + 64 + msg


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


K = TypeVar("K", bound=Hashable)  # an account key (solders Pubkey in the client)


def pack_submits(items: Sequence[tuple[K, str]], table_of: Mapping[K, int],
                 readonly: Sequence[K], *, cu_price: bool) -> list[list[int]]:
    """Greedy: consecutive submissions per v0 transaction while it fits PACKET_DATA_SIZE.

    items: (MeterState address, meter id) per submission, in order; table_of: address -> index of the lookup
    table it is taken from; readonly: the other table addresses every submit uses (oracle_data, system
    program). Returns the positions in `items`, cut into transactions (order kept).
    """
    fixed_ixs = compute_budget_ix_sizes(cu_price)

    def size(pdas: set[K], n: int, ix_bytes: int) -> int:
        tables: dict[int, list[int]] = {}
        for ro in readonly:
            tables.setdefault(table_of[ro], [0, 0])[1] += 1
        for p in pdas:
            tables.setdefault(table_of[p], [0, 0])[0] += 1
        return v0_size(V0_STATIC_KEYS, [*fixed_ixs, ix_bytes], n, tables)

    batches: list[list[int]] = []
    cur: list[int] = []
    pdas: set[K] = set()
    ix_bytes = 0
    for pos, (pda, meter_id) in enumerate(items):
        add = ix_size(4, submit_data_len(meter_id))
        if cur and size(pdas | {pda}, len(cur) + 1, ix_bytes + add) > PACKET_DATA_SIZE:
            batches.append(cur)
            cur, pdas, ix_bytes = [], set(), 0
        cur.append(pos)
        pdas.add(pda)
        ix_bytes += add
    if cur:
        batches.append(cur)
    return batches


def disjoint_wave(subs: Sequence[Submission], batches: list[list[int]]) -> tuple[list[list[int]], list[list[int]]]:
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
    "PACKET_DATA_SIZE",
    "compact_len",
    "compute_budget_ix_sizes",
    "disjoint_wave",
    "ix_size",
    "max_submits_per_tx",
    "pack_submits",
    "submit_data_len",
    "submit_tx_size",
    "v0_size",
]
