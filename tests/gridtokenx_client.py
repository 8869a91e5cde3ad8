"""A GridTokenX meter client written only from the contract (GridTokenX's private-network ingest API, as
gateway/README.md "HTTP ingest" states it), as its smart-meter simulator behaves: floats everywhere, Wh
rounded to 3 decimals, kWh to 6, the net kWh computed as a float difference (0.03 - 0.01 =
0.019999999999999997), the body serialised by a JSON library.
It imports nothing from the gateway: it is the other side of the contract.
Also: the exact energy such a client sent, in integer mWh, read back from the bodies' own text."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import base58

from protocol import SigningKey

INGEST_PATH = "/v1/private-network/ingest"


def sim_key(meter_id: str) -> SigningKey:
    """The simulator's deterministic device key: seed = sha256("gridtokenx-sim:<meter_id>")."""
    return SigningKey(hashlib.sha256(f"gridtokenx-sim:{meter_id}".encode()).digest())


def rust_display(x: float) -> str:
    """Rust's `{}` for an f64: shortest round-trip digits, no exponent, no trailing ".0"."""
    text = format(Decimal(repr(x)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass
class MeterClient:
    meter_id: str
    key: SigningKey = field(init=False)
    sent_import_mwh: int = 0  # what this client has sent and got 202 for, exactly (from the JSON text)
    sent_export_mwh: int = 0

    def __post_init__(self) -> None:
        self.key = sim_key(self.meter_id)

    def body(self, ts_s: int, import_wh: float, export_wh: float, *, kwh: float | None = None,
             energy_generated: float | None = None) -> bytes:
        imp, exp = round(import_wh, 3), round(export_wh, 3)
        generated, consumed = round(exp / 1000, 6), round(imp / 1000, 6)
        if kwh is None:
            kwh = generated - consumed  # a float difference, as the simulator computes it
        ts = datetime.fromtimestamp(ts_s, UTC).isoformat()
        sig = self.key.sign(f"{self.meter_id}:{rust_display(kwh)}:{ts_s * 1000}".encode())
        payload = {"1.1.1.8.0.255": imp, "1.1.2.8.0.255": exp, "kwh": kwh,
                   "energy_generated": generated if energy_generated is None else energy_generated,
                   "energy_consumed": consumed, "timestamp": ts, "signature": base58.b58encode(sig).decode(),
                   "1.1.32.7.0.255": 230.1, "1.1.31.7.0.255": 4.2, "1.1.14.7.0.255": 50.0, "1.1.13.7.0.255": 0.98,
                   "zone_code": "BKK-01"}
        return json.dumps({"protocol": "dlms", "device_id": self.meter_id, "payload": payload}).encode()

    def count_sent(self, body: bytes) -> None:
        """After a 202: add the body's energies, exactly as written in its text (mWh)."""
        p = json.loads(body, parse_float=Decimal)["payload"]
        self.sent_import_mwh += int(Decimal(p["1.1.1.8.0.255"]) * 1000)
        self.sent_export_mwh += int(Decimal(p["1.1.2.8.0.255"]) * 1000)
