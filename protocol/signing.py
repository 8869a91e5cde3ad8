"""Ed25519 over PyNaCl: the only module of the project that touches the crypto library."""

from __future__ import annotations

import hashlib

import nacl.exceptions
import nacl.signing

from protocol.errors import BadSignatureError, InvalidFieldError

SIGNATURE_BYTES = 64
PUBLIC_KEY_BYTES = 32
SEED_BYTES = 32


def key_id(public_key: bytes) -> bytes:
    """8-byte id of a device key carried in every reading (first 8 bytes of sha256(pubkey))."""
    return hashlib.sha256(bytes(public_key)).digest()[:8]


class SigningKey:
    """A device or gateway private key. Never printed: repr shows only the public key id."""

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise InvalidFieldError(f"private key seed: must be {SEED_BYTES} bytes (got {len(seed)})")
        self._key = nacl.signing.SigningKey(bytes(seed))

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(bytes(nacl.signing.SigningKey.generate()))

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.verify_key)

    @property
    def key_id(self) -> bytes:
        return key_id(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return bytes(self._key.sign(message).signature)

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id.hex()})"


class VerifyKey:
    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != PUBLIC_KEY_BYTES:
            raise InvalidFieldError(f"public key: must be {PUBLIC_KEY_BYTES} bytes (got {len(public_key)})")
        try:
            self._key = nacl.signing.VerifyKey(bytes(public_key))
        except (nacl.exceptions.CryptoError, ValueError, TypeError) as exc:
            raise InvalidFieldError(f"public key: not a valid Ed25519 key ({exc})") from exc
        self.public_key = bytes(public_key)

    def verify(self, message: bytes, signature: bytes) -> None:
        if len(signature) != SIGNATURE_BYTES:
            raise BadSignatureError(f"signature: must be {SIGNATURE_BYTES} bytes (got {len(signature)})")
        try:
            self._key.verify(message, signature)
        except (nacl.exceptions.BadSignatureError, nacl.exceptions.CryptoError, ValueError) as exc:
            raise BadSignatureError("signature does not verify against the registered key") from exc
