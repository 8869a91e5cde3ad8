"""Durable file replacement for the gateway's key files and the local chain's state file.

tmp (mode set before any byte is written, so a secret is never readable by others) + fsync + rename +
fsync(dir): a crash leaves the old file or the new one, never half of one (style rule 7).
agent/durable_file.py is the agent's copy: agent and gateway never import each other.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["write_durably"]


def write_durably(path: Path, data: bytes, mode: int = 0o600, *, exclusive: bool = False) -> None:
    """Replace `path` with `data`. exclusive=True refuses to replace an existing file (FileExistsError).
    Creates missing parent directories. Raises OSError."""
    path = Path(path)
    if exclusive and path.exists():
        raise FileExistsError(f"{path}: already exists")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
