"""keygen: 0600 key through agent.keys, public key printed (hex + base58), private key never printed."""

from __future__ import annotations

import json
import os
import pwd
import stat
from pathlib import Path

import base58
import pytest

from agent.keys import load_key_file
from gridmeter.cli import main


def _keygen(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(["provision", "keygen", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_keygen_creates_0600_key_and_prints_only_public(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "etc" / "device.key"
    rc, out, err = _keygen(capsys, "--key-file", str(key_file))
    assert rc == 0, err
    st = key_file.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    key = load_key_file(key_file)
    assert key.public_key.hex() in out
    assert base58.b58encode(key.public_key).decode() in out
    seed_hex = key_file.read_text().strip()
    assert seed_hex not in out and seed_hex not in err
    assert seed_hex.upper() not in out


def test_keygen_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "device.key"
    rc, out, _ = _keygen(capsys, "--key-file", str(key_file), "--json")
    assert rc == 0
    data = json.loads(out)
    key = load_key_file(key_file)
    assert data["public_key_hex"] == key.public_key.hex()
    assert base58.b58decode(data["public_key_base58"]) == key.public_key
    assert key_file.read_text().strip() not in out


def test_keygen_refuses_overwrite_then_force_keeps_backup(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "device.key"
    assert _keygen(capsys, "--key-file", str(key_file))[0] == 0
    old = key_file.read_bytes()
    rc, out, err = _keygen(capsys, "--key-file", str(key_file))
    assert rc == 1
    assert "refusing to overwrite" in err and str(key_file) in err
    assert key_file.read_bytes() == old

    rc, out, err = _keygen(capsys, "--key-file", str(key_file), "--force")
    assert rc == 0, err
    assert key_file.read_bytes() != old
    backups = list(tmp_path.glob("device.key.bak-*"))
    assert len(backups) == 1
    assert backups[0].read_bytes() == old
    assert stat.S_IMODE(backups[0].stat().st_mode) == 0o600
    assert old.decode().strip() not in out


def test_keygen_owner(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # chown to another user needs root; without root, owning it ourselves still exercises --owner
    owner = "nobody" if os.geteuid() == 0 else pwd.getpwuid(os.geteuid()).pw_name
    key_file = tmp_path / "device.key"
    rc, _, err = _keygen(capsys, "--key-file", str(key_file), "--owner", owner)
    assert rc == 0, err
    assert key_file.stat().st_uid == pwd.getpwnam(owner).pw_uid
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_keygen_unknown_owner_names_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _keygen(capsys, "--key-file", str(tmp_path / "k"), "--owner", "no-such-user-xyz")
    assert rc == 1
    assert "no-such-user-xyz" in err
    assert not (tmp_path / "k").exists()
