"""Program-derived addresses of the oracle's accounts (seeds from the IDL)."""

from __future__ import annotations

from solders.pubkey import Pubkey

from oracle_interface.layout import MAX_METER_ID_SEED


def oracle_data_pda(program_id: Pubkey) -> tuple[Pubkey, int]:
    return Pubkey.find_program_address([b"oracle_data"], program_id)


def meter_state_pda(program_id: Pubkey, meter_id: str) -> tuple[Pubkey, int]:
    seed = meter_id.encode("utf-8")
    if len(seed) > MAX_METER_ID_SEED:
        raise ValueError(f"meter_id {meter_id!r}: more than {MAX_METER_ID_SEED} bytes cannot be a PDA seed")
    return Pubkey.find_program_address([b"meter", seed], program_id)
