"""Regenerates reading_v1.json. Run ONLY for a deliberate format change (which needs a new version magic)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from protocol import Instantaneous, Quality, Reading, SigningKey, encode_batch, sign_reading

SEED = hashlib.sha256(b"gridmeter-vector:HOUSE-0042").digest()


def build() -> dict[str, object]:
    key = SigningKey(SEED)
    cases = []
    for reading in (
        Reading(
            meter_id="HOUSE-0042",
            key_id=key.key_id,
            seq=1234567,
            read_at_ms=1_780_734_600_123,
            clock_synced=True,
            energy_import_wh=5_123_456,
            energy_export_wh=987_654,
            profile_id="eastron-sdm630",
            instant=Instantaneous(power_w=-1520, voltage_l1_dv=2301, frequency_mhz=49_987, power_factor_milli=-950),
        ),
        Reading(
            meter_id="HOUSE-0042",
            key_id=key.key_id,
            seq=1234568,
            read_at_ms=1_780_734_610_456,
            clock_synced=False,
            energy_import_wh=2**63 - 1,  # stands for 2**64 - 1, patched below (encoders refuse it since issue 8)
            energy_export_wh=0,
            profile_id="",
            quality=Quality.GLITCH_SUSPECTED | Quality.CLOCK_UNSYNCED,
        ),
    ):
        s = sign_reading(reading, key)
        fields_imp = reading.energy_import_wh
        if reading.seq == 1234568:  # frozen as 2^64-1: now the vector of a refused out-of-domain u64
            payload = s.payload.replace((2**63 - 1).to_bytes(8, "little"), (2**64 - 1).to_bytes(8, "little"))
            s, fields_imp = type(s)(payload, key.sign(payload), reading), 2**64 - 1
        cases.append(
            {
                "payload_hex": s.payload.hex(),
                "signature_hex": s.signature.hex(),
                "fields": {
                    "meter_id": reading.meter_id,
                    "key_id_hex": reading.key_id.hex(),
                    "seq": reading.seq,
                    "read_at_ms": reading.read_at_ms,
                    "clock_synced": reading.clock_synced,
                    "quality": int(reading.quality),
                    "energy_import_wh": fields_imp,
                    "energy_export_wh": reading.energy_export_wh,
                    "profile_id": reading.profile_id,
                    "instant": {k: getattr(reading.instant, k) for k in Instantaneous.names()},
                },
            }
        )
    batch = encode_batch([(bytes.fromhex(c["payload_hex"]), bytes.fromhex(c["signature_hex"])) for c in cases])
    return {
        "description": "gridmeter/reading/v1 frozen vectors: Ed25519 seed = sha256('gridmeter-vector:HOUSE-0042')",
        "seed_hex": SEED.hex(),
        "public_key_hex": key.public_key.hex(),
        "readings": cases,
        "batch_hex": batch.hex(),
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("reading_v1.json")
    out.write_text(json.dumps(build(), indent=2) + "\n")
    print(f"wrote {out}")
