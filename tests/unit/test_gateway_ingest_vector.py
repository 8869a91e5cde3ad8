"""GridTokenX ingest: Rust f64 Display formatting and the published test vector."""

from __future__ import annotations

import hashlib

import base58
import pytest

from gateway.intake.http import rust_f64_display, signed_message
from protocol import SigningKey, VerifyKey

VECTOR_PUBKEY = "7225f0eae0344030d82419162bb65a868c48b71925dd78fa9ffbbc2a0303bfbc"
VECTOR_SIG = "2oEXHHnEWjBZnXj3G65GErjavfqfmXw97JBN6yNnNdB53dyMVs3rN9ExzSJregWosM988uDvXkJPSeTd9xUX3Pcq"


@pytest.mark.parametrize(("x", "text"), [
    (1.0, "1"), (-5.0, "-5"), (0.5, "0.5"), (-0.123456, "-0.123456"), (0.0, "0"), (-0.0, "-0"),
    (1e20, "100000000000000000000"), (1e-7, "0.0000001"), (0.1 + 0.2, "0.30000000000000004"), (1.25, "1.25"),
])
def test_rust_f64_display(x: float, text: str) -> None:
    assert rust_f64_display(x) == text


def test_gridtokenx_vector_verifies() -> None:
    key = SigningKey(hashlib.sha256(b"gridtokenx-sim:METER-001").digest())
    assert key.public_key.hex() == VECTOR_PUBKEY
    msg = signed_message("METER-001", rust_f64_display(-5.0), 1780734600)
    assert msg == b"METER-001:-5:1780734600000"
    VerifyKey(bytes.fromhex(VECTOR_PUBKEY)).verify(msg, base58.b58decode(VECTOR_SIG))
    assert base58.b58encode(key.sign(msg)).decode() == VECTOR_SIG  # Ed25519 is deterministic
