"""Compute-budget instructions of a transaction as a validator reads them (the unit limit it asked for, its
priority fee), and an optional dearer cost model for tests: `pda_derivation_cu` charges that many compute
units per program-address derivation instead of the cluster's 1,500, so the oracle program costs more compute
than the gateway's estimates (`gridmeter chain serve --pda-derivation-cu N`)."""

from __future__ import annotations

import struct

from solders.compute_budget import ID as COMPUTE_BUDGET_ID
from solders.compute_budget import ComputeBudget
from solders.litesvm import LiteSVM
from solders.message import Message, MessageV0, MessageV1

AnyMessage = Message | MessageV0 | MessageV1  # what VersionedTransaction.message may be
DEFAULT_UNITS_PER_INSTRUCTION = 200_000  # without SetComputeUnitLimit
MAX_UNITS_PER_TRANSACTION = 1_400_000
CLUSTER_PDA_DERIVATION_CU = 1_500  # create_program_address_units on mainnet-beta/devnet


def _budget_instructions(message: AnyMessage) -> tuple[int | None, int, int]:
    """(unit limit asked for or None, unit price in micro-lamports, number of other instructions)."""
    keys = list(message.account_keys)
    price = 0
    limit: int | None = None
    n_other = 0
    for ix in message.instructions:
        prog = keys[ix.program_id_index] if ix.program_id_index < len(keys) else None
        data = bytes(ix.data)
        if prog == COMPUTE_BUDGET_ID and data[:1] == b"\x03" and len(data) >= 9:
            price = struct.unpack_from("<Q", data, 1)[0]
        elif prog == COMPUTE_BUDGET_ID and data[:1] == b"\x02" and len(data) >= 5:
            limit = struct.unpack_from("<I", data, 1)[0]
        elif prog != COMPUTE_BUDGET_ID:
            n_other += 1
    return limit, price, n_other


def compute_unit_limit(message: AnyMessage) -> int:
    limit, _price, n_other = _budget_instructions(message)
    if limit is None:
        limit = DEFAULT_UNITS_PER_INSTRUCTION * n_other
    return min(limit, MAX_UNITS_PER_TRANSACTION)


def priority_fee(message: AnyMessage) -> int:
    """Lamports of priority fee: ceil(unit price (micro-lamports) x unit limit / 1e6), as a validator charges."""
    _limit, price, _n = _budget_instructions(message)
    return -(-price * compute_unit_limit(message) // 1_000_000)


def meter_with(svm: LiteSVM, message: AnyMessage, pda_derivation_cu: int | None) -> None:
    """Before executing `message`: with the dearer cost model, install it with the unit limit this transaction
    asked for (an installed budget replaces the transaction's own limit, so it is set per transaction)."""
    if pda_derivation_cu is None:
        return
    budget = ComputeBudget(False)
    budget.create_program_address_units = pda_derivation_cu
    budget.compute_unit_limit = compute_unit_limit(message)
    svm.with_compute_budget(budget)
