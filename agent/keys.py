"""The device's Ed25519 private key on disk.

Format: 64 hex characters of the 32-byte Ed25519 seed followed by "\\n". The file must be mode 0600
(no group/other bits): a key another local user can read lets them forge this meter's readings, so the
agent refuses to start rather than warn. Files are written tmp + fsync + rename + fsync(dir) so a power
cut leaves either no key or a whole key, never half of one.
"""

from __future__ import annotations

from pathlib import Path

from base.durable_file import write_durably
from base.key_file import KEY_FILE_MODE, KeyFileError, read_private_file
from protocol.errors import InvalidFieldError
from protocol.signing import SEED_BYTES, SigningKey

__all__ = ["KeyFileError", "create_key_file", "load_key_file", "write_public_key"]

KEY_HEX_CHARS = SEED_BYTES * 2


_EXISTS = "{path}: already exists; refusing to overwrite a device key (pass overwrite=True)"


def _write_key(path: Path, data: bytes, owner: str | None, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise KeyFileError(_EXISTS.format(path=path))
    if not path.parent.is_dir():
        raise KeyFileError(f"{path}: directory {path.parent} does not exist; create it first")
    try:
        write_durably(path, data, KEY_FILE_MODE, owner=owner, exclusive=not overwrite, make_parents=False)
    except FileExistsError:
        raise KeyFileError(_EXISTS.format(path=path)) from None
    except KeyError as exc:
        raise KeyFileError(
            f"{path}: owner {owner!r} is not a known user; create it first: `sudo scripts/install agent` "
            f"(creates the gridmeter service user) or `sudo useradd --system --home-dir /var/lib/gridmeter "
            f"--shell /usr/sbin/nologin --groups dialout {owner}`"
        ) from exc
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write key file ({exc.strerror or exc})") from exc


def create_key_file(path: Path, *, owner: str | None = None, overwrite: bool = False) -> SigningKey:
    """Generate a new key and write it to `path` (mode 0600, chown to `owner` if given)."""
    path = Path(path)
    key = SigningKey.generate()
    _write_key(path, key.seed.hex().encode("ascii") + b"\n", owner, overwrite)
    return key


def load_key_file(path: Path) -> SigningKey:
    """Load a key written by create_key_file. Refuses missing, symlinked, group/other-accessible or malformed
    files (base.key_file checks before reading)."""
    path = Path(path)
    raw = read_private_file(path, missing_hint="create it with `gridmeter provision keygen` (or provision register)",
                            symlink_hint="point the agent config's key_file at the key file itself")
    return _parse_key(path, raw)


def _parse_key(path: Path, raw: bytes) -> SigningKey:
    text = raw.strip()
    if len(text) != KEY_HEX_CHARS:
        raise KeyFileError(
            f"{path}: expected {KEY_HEX_CHARS} hex characters of an Ed25519 seed (got {len(text)} characters)"
        )
    try:
        seed = bytes.fromhex(text.decode("ascii"))
        return SigningKey(seed)
    except (ValueError, UnicodeDecodeError, InvalidFieldError) as exc:
        raise KeyFileError(f"{path}: not a hex Ed25519 seed ({exc})") from exc


def write_public_key(path: Path, key: SigningKey) -> None:
    """Write the public key (64 hex + newline), world-readable: it is given to the gateway."""
    path = Path(path)
    try:
        write_durably(path, key.public_key.hex().encode("ascii") + b"\n", 0o644, make_parents=False)
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot write public key ({exc.strerror or exc})") from exc
