"""The chain_bridge authority key file: the Solana keypair that signs every oracle submission.

Read as solana-keygen JSON (a 64-byte array) or 64 hex chars of an Ed25519 seed; written as solana-keygen JSON,
mode 0600, durably. Errors are OracleClientError naming the path, the problem and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

from solders.keypair import Keypair

from gateway.durable_file import write_durably
from gateway.oracle_errors import OracleClientError


def load_authority_keypair(path: str | Path) -> Keypair:
    """The chain_bridge keypair: solana-keygen JSON (64-byte array) or 64 hex chars of an Ed25519 seed."""
    p = Path(path)
    try:
        st = p.stat()
        text = p.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise OracleClientError(f"{p}: authority key file missing (create one with "
                                f"`gridmeter gateway authority-key {p}` or solana-keygen)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise OracleClientError(f"{p}: cannot read authority key file ({e})") from e
    if st.st_mode & 0o077:
        raise OracleClientError(f"{p}: readable by group/other (mode {st.st_mode & 0o777:o}); chmod 600 it")
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
    if p.exists() and not overwrite:
        raise OracleClientError(f"{p}: already exists (refusing to overwrite a key)")
    kp = Keypair()
    try:
        write_durably(p, json.dumps(list(bytes(kp))).encode() + b"\n", 0o600)
    except OSError as exc:
        raise OracleClientError(f"{p}: cannot write authority key file ({exc.strerror or exc})") from exc
    return kp


__all__ = ["create_authority_key_file", "load_authority_keypair"]
