"""What goes into the oracle client's transactions (pure): the oracle's PDAs (cached), the submit_meter_reading
instruction (accounts from oracle_interface.instructions), the address lookup table program's create/extend
instructions, and the compute-unit limit estimated for a batch of submissions."""

from __future__ import annotations

import functools
import struct
from collections.abc import Sequence

from solders.address_lookup_table_account import ID as ALT_PROGRAM_ID
from solders.address_lookup_table_account import derive_lookup_table_address
from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey
from solders.system_program import ID as SYSTEM_PROGRAM_ID

from gateway.oracle.submission import Submission
from oracle_interface.addresses import meter_state_pda, oracle_data_pda
from oracle_interface.instructions import submit_meter_reading_instruction

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
DEFAULT_PDA_CACHE = 65_536  # meter PDAs kept (32 + a few bytes each)


@functools.lru_cache(maxsize=DEFAULT_PDA_CACHE)
def meter_pda(program_id: Pubkey, meter_id: str) -> tuple[Pubkey, int]:
    """MeterState PDA and bump (cached: the bump search is the costly part of packing)."""
    return meter_state_pda(program_id, meter_id)


@functools.lru_cache(maxsize=16)
def oracle_pda(program_id: Pubkey) -> Pubkey:
    return oracle_data_pda(program_id)[0]


def submit_instruction(program_id: Pubkey, authority: Pubkey, sub: Submission) -> Instruction:
    return submit_meter_reading_instruction(
        program_id, authority, sub.meter_id, sub.produced_wh, sub.consumed_wh, sub.reading_timestamp, sub.zone_id,
        oracle_data=oracle_pda(program_id), meter_state=meter_pda(program_id, sub.meter_id)[0])


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


__all__ = [
    "DEFAULT_CU_BASE",
    "DEFAULT_CU_FIRST_READING",
    "DEFAULT_CU_NONCE_RANGE",
    "DEFAULT_CU_PER_BUMP_STEP",
    "DEFAULT_CU_READING",
    "MAX_CU_PER_TX",
    "create_lookup_table_instruction",
    "estimate_compute_units",
    "extend_lookup_table_instruction",
    "meter_pda",
    "oracle_pda",
    "submit_instruction",
]
