"""Builders shared by the gateway tests: keys, registration records, signed readings."""

from __future__ import annotations

import hashlib
from typing import Any

from protocol import (
    Instantaneous,
    MeterRole,
    Quality,
    Reading,
    Registration,
    SignedReading,
    SigningKey,
    encode_batch,
    sign_reading,
    sign_registration,
)

T0_MS = 1_780_000_000_000  # 2026-05-28, a fixed "now" for pure tests


def key_for(meter_id: str) -> SigningKey:
    return SigningKey(hashlib.sha256(f"gridmeter-test:{meter_id}".encode()).digest())


def record_for(meter_id: str, *, key: SigningKey | None = None, role: MeterRole = MeterRole.GRID, zone: int = 1,
               rated_w: int = 10_000, serial: str = "SN-1", created_ms: int = T0_MS - 86_400_000,
               previous: SigningKey | None = None, profile: str = "eastron-sdm630") -> str:
    key = key or key_for(meter_id)
    reg = Registration(meter_id, key.public_key, profile, serial, role, zone, rated_w, "installer-7", created_ms,
                       previous.public_key if previous else None)
    return sign_registration(reg, key, previous).to_text()


def reading(meter_id: str, seq: int, read_at_ms: int, imp: int, exp: int = 0, *, key: SigningKey | None = None,
            synced: bool = True, quality: Quality = Quality.NONE, power_w: int | None = 500) -> SignedReading:
    key = key or key_for(meter_id)
    r = Reading(meter_id, key.key_id, seq, read_at_ms, synced, imp, exp, "eastron-sdm630", quality,
                Instantaneous(power_w=power_w))
    return sign_reading(r, key)


def batch(*signed: SignedReading) -> bytes:
    return encode_batch(list(signed))


def set_oracle_fields(srv: Any, **fields: int) -> None:
    """Genesis-style edit of the local chain's OracleData (the program has no instruction for
    min_reading_interval). `srv` is a localchain.server.LocalChainServer running in this process."""
    import struct

    from solders.account import Account

    from oracle_interface.addresses import oracle_data_pda

    offsets = {"min_reading_interval": (168, "<H"), "min_energy_value": (104, "<Q"), "max_energy_value": (112, "<Q")}
    pda = oracle_data_pda(srv.chain.program_id)[0]
    acc = srv.chain.svm.get_account(pda)
    data = bytearray(acc.data)
    for name, v in fields.items():
        off, fmt = offsets[name]
        struct.pack_into(fmt, data, off, v)
    srv.chain.svm.set_account(pda, Account(acc.lamports, bytes(data), acc.owner, acc.executable, acc.rent_epoch))
