"""The gateway's Ed25519 ack-signing key file (same format as the agent's: 64 hex chars of the seed + "\\n").

Agents pin the matching public key (agent config mqtt.gateway_public_key) and accept only acks signed
by it, so this key decides what agents delete from their stores.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from gateway.durable_file import write_durably
from protocol import SigningKey


class KeyFileError(Exception):
    """Names the path, what is wrong and what to do."""


MAX_KEY_FILE_BYTES = 256  # 64 hex + newline; anything much larger is not a key file


def load_key_file(path: str | Path) -> SigningKey:
    """Opened without following a symlink (O_NOFOLLOW: a link planted in /etc/gridmeter cannot redirect the
    gateway to a key of someone's choosing); type and mode are checked on the open file BEFORE a byte is read."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError(f"{p}: key file missing (create it with `gridmeter gateway keygen {p}`)") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise KeyFileError(f"{p}: is a symbolic link; point gateway.ack_key_file at the key file itself") from None
        raise KeyFileError(f"{p}: cannot open key file ({exc.strerror or exc})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{p}: not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(f"{p}: readable by group/other (mode {stat.S_IMODE(st.st_mode):o}); chmod 600 it "
                               "and check nobody copied it")
        raw = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot read key file ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
    try:
        seed = bytes.fromhex(raw.decode("ascii").strip()) if len(raw) <= MAX_KEY_FILE_BYTES else b""
    except (UnicodeDecodeError, ValueError):
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
