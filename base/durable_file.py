"""Durable file replacement: key files, public keys, configs, provisioning records, the local chain's state.

tmp (mode and owner set before any byte is written, so a secret is never readable by others, not even for a
moment) + fsync + rename (or link, for no-clobber) + fsync(dir): a power cut in the cellar leaves the old file
or the new one, never half of one, and the rename itself survives (style rule 7). exclusive=True links the
finished temporary file into place, so two writers racing for a new file cannot both win.
Used by agent, gateway, provisioning and localchain alike (the one copy: it lives below all of them).
"""

from __future__ import annotations

import contextlib
import os
import pwd
from pathlib import Path

__all__ = ["write_durably"]


def write_durably(path: Path, data: bytes, mode: int, *, owner: str | None = None, exclusive: bool = False,
                  make_parents: bool = True) -> None:
    """Replace `path` with `data` (file mode `mode`, chown to `owner` if given). exclusive=True never replaces
    an existing file (FileExistsError, atomically: two writers cannot both win). Raises OSError, or KeyError
    for an unknown owner."""
    path = Path(path)
    if make_parents:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.fchmod(fd, mode)  # the umask may have removed bits, never added: set exactly
            if owner is not None:
                pw = pwd.getpwnam(owner)
                os.fchown(fd, pw.pw_uid, pw.pw_gid)
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        if exclusive:
            os.link(tmp, path)  # atomic no-clobber
        else:
            os.replace(tmp, path)
        dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
