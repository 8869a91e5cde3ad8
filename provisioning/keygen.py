"""`gridmeter provision keygen`: create the meter's Ed25519 key on the device.

The private key is written only by agent.keys.create_key_file (0600, owned by the agent's user, atomic) and
is never printed, logged or returned to the caller's output. The public key is printed in hex (what the
agent config and the gateway use) and base58 (what Solana tools show), so the installer can compare it
with what the gateway lists after `gateway meters add`.

Overwriting an existing key needs --force: a replaced key orphans the meter at the gateway until a
rotation record (`provision rotate-key`) is imported. With --force the old key file is kept as a backup
(same mode) next to it, because losing it would make that rotation record impossible to sign.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import base58

from agent.keys import KeyFileError, create_key_file, load_key_file
from protocol.signing import SigningKey

BACKUP_SUFFIX = ".bak-"


@dataclass(frozen=True)
class KeygenResult:
    key_file: Path
    public_key: bytes
    backup: Path | None

    @property
    def public_hex(self) -> str:
        return self.public_key.hex()

    @property
    def public_base58(self) -> str:
        return base58.b58encode(self.public_key).decode("ascii")


def backup_key_file(path: Path, now_s: int) -> Path:
    """Copy an existing key file to `<path>.bak-<unix s>` with its mode and owner (never world-readable)."""
    backup = path.with_name(f"{path.name}{BACKUP_SUFFIX}{now_s}")
    n = 0
    while backup.exists():
        n += 1
        backup = path.with_name(f"{path.name}{BACKUP_SUFFIX}{now_s}.{n}")
    st = path.stat()
    fd = os.open(backup, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with open(path, "rb") as src:
            os.write(fd, src.read())
        os.fchmod(fd, 0o600)
        if os.geteuid() == 0:
            os.fchown(fd, st.st_uid, st.st_gid)
        os.fsync(fd)
    finally:
        os.close(fd)
    return backup


def generate_key(path: Path, *, owner: str | None = None, force: bool = False,
                 now_s: int | None = None) -> tuple[KeygenResult, SigningKey | None]:
    """Create a key at `path`. Returns (result, previous key if one was replaced and readable).

    Raises KeyFileError when the file exists and force is False, or when it cannot be written.
    """
    path = Path(path)
    previous: SigningKey | None = None
    backup: Path | None = None
    if path.exists():
        if not force:
            raise KeyFileError(
                f"{path}: a device key already exists; refusing to overwrite it. Use `provision rotate-key` to "
                "replace a registered key, or --force to overwrite (the old key is kept as a backup)"
            )
        try:
            previous = load_key_file(path)
        except KeyFileError:
            previous = None  # unreadable/malformed old file: still back it up, nothing to vouch with
        backup = backup_key_file(path, int(time.time()) if now_s is None else now_s)
    key = create_key_file(path, owner=owner, overwrite=force)
    return KeygenResult(path, key.public_key, backup), previous


def describe(result: KeygenResult) -> str:
    lines = [
        f"key file:        {result.key_file} (mode 0600; private key not shown)",
        f"public key hex:  {result.public_hex}",
        f"public key b58:  {result.public_base58}",
    ]
    if result.backup is not None:
        lines.append(f"previous key kept as {result.backup} (needed to sign a rotation record; delete it later)")
    return "\n".join(lines)


def ensure_parent(path: Path) -> None:
    """Create the key's directory on a fresh Pi. 0755: the agent's user must reach its 0600 key (owned by it) and
    its config in the same directory; the key's own mode is what keeps it private."""
    parent = Path(path).parent
    if not parent.exists():
        parent.mkdir(parents=True, mode=0o755)
