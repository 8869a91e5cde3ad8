"""The gateway's Ed25519 ack-signing key file (same format as the agent's: 64 hex chars of the seed + "\\n").

Agents pin the matching public key (agent config mqtt.gateway_public_key) and accept only acks signed
by it, so this key decides what agents delete from their stores.
"""

from __future__ import annotations

from pathlib import Path

from base.durable_file import write_durably
from base.key_file import KEY_FILE_MODE, MAX_KEY_FILE_BYTES, KeyFileError, read_private_file
from protocol import SigningKey


def load_key_file(path: str | Path) -> SigningKey:
    """Refuses a missing file, a symlink, group/other access (base.key_file: checked before a byte is read) and
    anything but 64 hex characters."""
    p = Path(path)
    raw = read_private_file(p, missing_hint=f"create it with `gridmeter gateway keygen {p}`",
                            symlink_hint="point gateway.ack_key_file at the key file itself")
    try:
        seed = bytes.fromhex(raw.decode("ascii").strip()) if len(raw) <= MAX_KEY_FILE_BYTES else b""
    except (UnicodeDecodeError, ValueError):
        seed = b""
    if len(seed) != 32:
        raise KeyFileError(f"{p}: must hold 64 hex characters (an Ed25519 seed)")
    return SigningKey(seed)


def create_key_file(path: str | Path, *, overwrite: bool = False) -> SigningKey:
    """Create a new key file, mode 0600, written durably; without overwrite an existing file is never replaced
    (atomically: two racing keygens cannot both win)."""
    p = Path(path)
    exists = f"{p}: already exists (refusing to overwrite a key)"
    if p.exists() and not overwrite:
        raise KeyFileError(exists)
    key = SigningKey.generate()
    try:
        write_durably(p, (key.seed.hex() + "\n").encode("ascii"), KEY_FILE_MODE, exclusive=not overwrite)
    except FileExistsError:
        raise KeyFileError(exists) from None
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot write key file ({exc.strerror or exc})") from exc
    return key


__all__ = ["KeyFileError", "create_key_file", "load_key_file"]
