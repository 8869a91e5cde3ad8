"""Durable file replacement for everything provisioning writes (agent config, records, secrets, ACL lines).

tmp + fsync + rename + fsync(dir): a power cut in the cellar leaves the old file or the new one, never half of
one, and the rename itself survives (style rule 7). The mode is set on the temporary file before any byte is
written, so a secret is never readable by others, not even for a moment.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["write_durably"]


def write_durably(path: Path, data: bytes, mode: int) -> None:
    """Replace `path` with `data` (file mode `mode`). Creates missing parent directories. Raises OSError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
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
