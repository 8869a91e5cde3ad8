"""The chain_bridge authority key file: the Solana keypair that signs every oracle submission.

Read as solana-keygen JSON (a 64-byte array) or 64 hex chars of an Ed25519 seed; written as solana-keygen JSON,
mode 0600, durably. Errors are OracleClientError naming the path, the problem and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

from solders.keypair import Keypair

from base.durable_file import write_durably
from base.key_file import KEY_FILE_MODE, KeyFileError, read_private_file
from gateway.oracle.errors import OracleClientError

MAX_AUTHORITY_KEY_BYTES = 1024  # solana-keygen JSON of 64 bytes is at most ~260 characters


def load_authority_keypair(path: str | Path) -> Keypair:
    """The chain_bridge keypair: solana-keygen JSON (64-byte array) or 64 hex chars of an Ed25519 seed."""
    p = Path(path)
    try:
        raw = read_private_file(p, max_bytes=MAX_AUTHORITY_KEY_BYTES,
                                missing_hint=f"create one with `gridmeter gateway authority-key {p}` or solana-keygen",
                                symlink_hint="point chain.authority_key_file at the key file itself")
        if len(raw) > MAX_AUTHORITY_KEY_BYTES:
            raise KeyFileError(f"{p}: larger than {MAX_AUTHORITY_KEY_BYTES} bytes: not a keypair file")
        text = raw.decode("ascii").strip()
    except KeyFileError as e:
        raise OracleClientError(str(e)) from None
    except UnicodeDecodeError as e:
        raise OracleClientError(f"{p}: cannot read authority key file ({e})") from e
    try:
        if text.startswith("["):
            raw = bytes(json.loads(text))
            if len(raw) != 64:
                raise ValueError("expected 64 bytes")
            kp = Keypair.from_bytes(raw)
        else:
            seed = bytes.fromhex(text)
            if len(seed) != 32:
                raise ValueError("expected 64 hex characters")
            kp = Keypair.from_seed(seed)
    except ValueError as e:
        raise OracleClientError(f"{p}: not a keypair file ({e}); expected solana-keygen JSON or a hex seed") from e
    return kp


def create_authority_key_file(path: str | Path, *, overwrite: bool = False) -> Keypair:
    """Write a new keypair in solana-keygen JSON format, mode 0600 (tmp + fsync + rename + fsync dir)."""
    p = Path(path)
    exists = f"{p}: already exists (refusing to overwrite a key)"
    if p.exists() and not overwrite:
        raise OracleClientError(exists)
    kp = Keypair()
    try:
        write_durably(p, json.dumps(list(bytes(kp))).encode() + b"\n", KEY_FILE_MODE, exclusive=not overwrite)
    except FileExistsError:
        raise OracleClientError(exists) from None
    except OSError as exc:
        raise OracleClientError(f"{p}: cannot write authority key file ({exc.strerror or exc})") from exc
    return kp


__all__ = ["create_authority_key_file", "load_authority_keypair"]
