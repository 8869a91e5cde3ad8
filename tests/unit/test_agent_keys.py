from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from agent.keys import KeyFileError, create_key_file, load_key_file, write_public_key


def test_create_then_load_roundtrip(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    key = create_key_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert len(text) == 65 and text.endswith("\n")
    assert load_key_file(path).public_key == key.public_key
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_create_refuses_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "device.key"
    first = create_key_file(path)
    with pytest.raises(KeyFileError, match="already exists"):
        create_key_file(path)
    second = create_key_file(path, overwrite=True)
    assert second.public_key != first.public_key
    assert load_key_file(path).public_key == second.public_key


def test_missing_file_names_path_and_fix(tmp_path: Path) -> None:
    path = tmp_path / "nope.key"
    with pytest.raises(KeyFileError, match=r"nope\.key: key file missing.*provision"):
        load_key_file(path)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o610])
def test_group_or_other_readable_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "device.key"
    create_key_file(path)
    os.chmod(path, mode)
    with pytest.raises(KeyFileError, match=rf"mode {mode:04o}.*chmod 600"):
        load_key_file(path)


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "got 0 characters"),
        (b"ab" * 31 + b"\n", "got 62 characters"),
        (b"zz" * 32 + b"\n", "not a hex"),
        (b"x" * 1000, "got"),
    ],
)
def test_malformed_content_is_refused(tmp_path: Path, content: bytes, match: str) -> None:
    path = tmp_path / "device.key"
    path.write_bytes(content)
    os.chmod(path, 0o600)
    with pytest.raises(KeyFileError, match=match):
        load_key_file(path)


def test_symlink_and_directory_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    create_key_file(real)
    link = tmp_path / "link.key"
    link.symlink_to(real)
    with pytest.raises(KeyFileError, match="is a symbolic link"):
        load_key_file(link)
    d = tmp_path / "dir.key"
    d.mkdir(mode=0o700)
    with pytest.raises(KeyFileError):
        load_key_file(d)


def test_missing_directory_and_unknown_owner(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="does not exist"):
        create_key_file(tmp_path / "sub" / "device.key")
    with pytest.raises(KeyFileError, match="not a known user; create it first: `sudo scripts/install agent`"):
        create_key_file(tmp_path / "device.key", owner="no-such-user-gridmeter")
    assert not (tmp_path / "device.key").exists()


def test_public_key_file(tmp_path: Path) -> None:
    key = create_key_file(tmp_path / "device.key")
    write_public_key(tmp_path / "device.pub", key)
    assert (tmp_path / "device.pub").read_text() == key.public_key.hex() + "\n"
