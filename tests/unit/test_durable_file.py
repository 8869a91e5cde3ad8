"""base.durable_file (agent, gateway, provisioning, localchain): exact modes whatever the umask, no-clobber,
no temp files left."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from base.durable_file import write_durably as write


def test_mode_is_exact_whatever_the_umask_and_no_temp_is_left(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write(tmp_path / "sub" / "pub.key", b"abc\n", 0o644)
    finally:
        os.umask(old)
    target = tmp_path / "sub" / "pub.key"
    assert target.read_bytes() == b"abc\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    write(target, b"new\n", 0o600)  # replace
    assert target.read_bytes() == b"new\n" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in target.parent.iterdir()) == ["pub.key"]


def test_exclusive_never_replaces(tmp_path: Path) -> None:
    target = tmp_path / "device.key"
    write(target, b"first\n", 0o600, exclusive=True)
    with pytest.raises(FileExistsError):
        write(target, b"second\n", 0o600, exclusive=True)
    assert target.read_bytes() == b"first\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device.key"]
