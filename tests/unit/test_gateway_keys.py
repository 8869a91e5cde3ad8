"""The gateway's ack-key loader (issue 8): it followed symlinks and read the file before checking its mode; the
agent's loader refuses both. Now: O_NOFOLLOW, and type + mode checked on the open file before any read."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from gateway.keys import KeyFileError, create_key_file, load_key_file


def test_a_good_key_file_loads(tmp_path: Path) -> None:
    key = create_key_file(tmp_path / "gateway.key")
    assert (tmp_path / "gateway.key").stat().st_mode & 0o777 == 0o600
    assert load_key_file(tmp_path / "gateway.key").public_key == key.public_key


def test_a_symlink_is_refused(tmp_path: Path) -> None:
    create_key_file(tmp_path / "elsewhere.key")
    (tmp_path / "gateway.key").symlink_to(tmp_path / "elsewhere.key")
    with pytest.raises(KeyFileError, match="symbolic link"):
        load_key_file(tmp_path / "gateway.key")


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644])
def test_group_or_other_access_is_refused(tmp_path: Path, mode: int) -> None:
    create_key_file(tmp_path / "gateway.key")
    os.chmod(tmp_path / "gateway.key", mode)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_key_file(tmp_path / "gateway.key")


def test_checked_before_reading_a_fifo_never_blocks(tmp_path: Path) -> None:
    """Type and mode are decided on the open file before a read: a FIFO put where the key belongs is refused
    at once (reading it first would block the gateway's start until someone writes to it)."""
    fifo = tmp_path / "gateway.key"
    os.mkfifo(fifo, 0o600)
    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            load_key_file(fifo)
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    t = threading.Thread(target=load, daemon=True)
    t.start()
    t.join(20)
    if t.is_alive():  # unblock the loader so the test ends, then fail
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(5)
        pytest.fail("the loader blocked reading a FIFO before checking what it is")
    assert isinstance(outcome[0], KeyFileError) and "not a regular file" in str(outcome[0])


@pytest.mark.parametrize("content", [b"", b"zz" * 32, b"ab" * 31, b"a" * 10_000])
def test_malformed_content_is_refused(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "gateway.key"
    p.write_bytes(content)
    os.chmod(p, 0o600)
    with pytest.raises(KeyFileError, match="64 hex characters"):
        load_key_file(p)
