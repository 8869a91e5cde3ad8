"""Reading a private key file safely: the one loader under the agent's device key, the gateway's ack key and
the chain_bridge authority key.

The file is opened without following a symlink (O_NOFOLLOW: a link planted in /etc/gridmeter cannot redirect a
service to a key of someone's choosing) and without blocking (O_NONBLOCK: a FIFO planted there cannot hang the
start); type and mode are checked on the open file BEFORE a byte is read, and at most `max_bytes` + 1 are read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

KEY_FILE_MODE = 0o600
MAX_KEY_FILE_BYTES = 256  # 64 hex + newline; anything much larger is not a key file (and is not read into memory)


class KeyFileError(Exception):
    """A key file that is missing, unsafe or unreadable. The message names the path, the problem and the fix."""


def read_private_file(path: str | Path, *, missing_hint: str, symlink_hint: str = "",
                      max_bytes: int = MAX_KEY_FILE_BYTES) -> bytes:
    """The bytes of a private file (at most max_bytes + 1: the caller refuses an oversized one). Refuses a
    missing file (message + missing_hint), a symlink, anything but a regular file, and group/other access."""
    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeyFileError(f"{p}: key file missing; {missing_hint}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            fix = f"; {symlink_hint}" if symlink_hint else "; point the config at the key file itself"
            raise KeyFileError(f"{p}: is a symbolic link{fix}") from None
        raise KeyFileError(f"{p}: cannot open key file ({exc.strerror or exc})") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(f"{p}: not a regular file")
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{p}: key file is accessible by group/others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"run `chmod 600 {p}` and check nobody copied it"
            )
        return os.read(fd, max_bytes + 1)
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot read key file ({exc.strerror or exc})") from exc
    finally:
        os.close(fd)
