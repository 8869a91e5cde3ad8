"""The gateway's Ed25519 ack-signing key file (same format as the agent's: 64 hex chars of the seed + "\\n").

Agents pin the matching public key (agent config mqtt.gateway_public_key) and accept only acks signed
by it, so this key decides what agents delete from their stores.
"""

from __future__ import annotations

import stat
from pathlib import Path

from gateway.durable_file import write_durably
from protocol import SigningKey


class KeyFileError(Exception):
    """Names the path, what is wrong and what to do."""


def load_key_file(path: str | Path) -> SigningKey:
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise KeyFileError(f"{p}: key file missing (create it with `gridmeter gateway keygen {p}`)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"{p}: cannot read key file ({exc})") from exc
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(f"{p}: readable by group/other (mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it")
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        seed = b""
    if len(seed) != 32:
        raise KeyFileError(f"{p}: must hold 64 hex characters (an Ed25519 seed)")
    return SigningKey(seed)


def create_key_file(path: str | Path, *, overwrite: bool = False) -> SigningKey:
    """Create a new key file, mode 0600, written durably (gateway.durable_file)."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise KeyFileError(f"{p}: already exists (refusing to overwrite a key)")
    key = SigningKey.generate()
    try:
        write_durably(p, (key.seed.hex() + "\n").encode("ascii"), 0o600)
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot write key file ({exc.strerror or exc})") from exc
    return key
