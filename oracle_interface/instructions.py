"""The oracle's instructions with their account lists (from the IDL): submit_meter_reading, which the gateway
sends, and initialize and the admin instructions, which only the local chain and its tests send."""

from __future__ import annotations

from solders.instruction import AccountMeta, Instruction
from solders.pubkey import Pubkey
from solders.system_program import ID as SYSTEM_PROGRAM_ID

from oracle_interface import layout
from oracle_interface.addresses import meter_state_pda, oracle_data_pda


def program_key(key: Pubkey | str) -> Pubkey:
    return key if isinstance(key, Pubkey) else Pubkey.from_string(key)


def submit_meter_reading_instruction(
    program_id: Pubkey | str,
    authority: Pubkey,
    meter_id: str,
    energy_produced: int,
    energy_consumed: int,
    reading_timestamp: int,
    zone_id: int,
    *,
    oracle_data: Pubkey | None = None,
    meter_state: Pubkey | None = None,
) -> Instruction:
    """oracle_data (R), meter_state (W, created on the meter's first reading), authority (S, W: pays),
    system program. Pass the PDAs when already known (deriving a MeterState PDA costs a bump search)."""
    pid = program_key(program_id)
    oracle_data = oracle_data or oracle_data_pda(pid)[0]
    meter_state = meter_state or meter_state_pda(pid, meter_id)[0]
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


def initialize_instruction(program_id: Pubkey | str, authority: Pubkey, chain_bridge: Pubkey) -> Instruction:
    pid = program_key(program_id)
    oracle_data, _ = oracle_data_pda(pid)
    return Instruction(
        pid,
        layout.initialize_data(chain_bridge),
        [
            AccountMeta(oracle_data, is_signer=False, is_writable=True),
            AccountMeta(authority, is_signer=True, is_writable=True),
            AccountMeta(SYSTEM_PROGRAM_ID, is_signer=False, is_writable=False),
        ],
    )


def admin_instruction(program_id: Pubkey | str, authority: Pubkey, data: bytes) -> Instruction:
    """update_oracle_status / update_api_gateway / update_validation_config / update_production_ratio_config
    (and trigger_market_clearing / aggregate_readings without an aggregator entry): oracle_data (W), authority (S).
    `data` comes from the matching layout.*_data builder."""
    pid = program_key(program_id)
    oracle_data, _ = oracle_data_pda(pid)
    return Instruction(
        pid,
        data,
        [
            AccountMeta(oracle_data, is_signer=False, is_writable=True),
            AccountMeta(authority, is_signer=True, is_writable=False),
        ],
    )
