"""scripts/install and scripts/uninstall into a staging root (--root): the real scripts, a real venv, real units.

What a packager or an installer relies on: the program lands under /opt/gridmeter with `gridmeter` on PATH, the
units pass `systemd-analyze verify` against the staged tree, the documented example config passes check-config,
nothing the installer made (config, key, env, state) is ever overwritten, --upgrade switches the release and keeps
them, uninstall keeps data unless --purge.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
INSTALL, UNINSTALL = REPO / "scripts" / "install", REPO / "scripts" / "uninstall"
SYSTEMD_UNITS = Path("/usr/lib/systemd/system")

pytestmark = [pytest.mark.system, pytest.mark.slow]


def sh(*argv: str | Path, ok: bool = True, timeout: float = 900,
       env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}, **(env or {})}
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, env=env)
    if ok and out.returncode != 0:
        raise AssertionError(f"{argv} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


def staged_example(root: Path, role: str) -> Path:
    """The installed documented example, with its absolute /etc and /var paths moved into the staging root."""
    text = (root / f"etc/gridmeter/{role}.toml.example").read_text()
    text = text.replace("/etc/gridmeter", str(root / "etc/gridmeter")).replace("/var/lib", str(root / "var/lib"))
    path = root / f"etc/gridmeter/{role}.toml"
    path.write_text(text)
    return path


def verify_unit(root: Path, unit: str) -> subprocess.CompletedProcess[str]:
    return sh("systemd-analyze", "verify", f"--root={root}", unit, ok=False)


def test_install_upgrade_uninstall_into_a_staging_root(tmp_path: Path) -> None:
    # scripts/bootstrap installs Debian's systemd package: its absence is a failure, never a skip
    assert shutil.which("systemd-analyze") and SYSTEMD_UNITS.is_dir(), "systemd-analyze / unit dir missing"
    root = tmp_path / "root"
    # systemd-analyze verify --root resolves the units' dependencies (sysinit.target, ...) inside the root
    shutil.copytree(SYSTEMD_UNITS, root / "usr/lib/systemd/system", symlinks=True)

    first = sh(INSTALL, "agent", "--root", root)
    assert "installing gridmeter" in first.stdout
    assert "NOT started: /etc/gridmeter/agent.toml does not exist yet" in first.stdout
    assert "sudo gridmeter provision keygen --key-file /etc/gridmeter/device.key --owner gridmeter" in first.stdout
    gm = root / "opt/gridmeter/.venv/bin/gridmeter"
    link = root / "usr/local/bin/gridmeter"
    assert os.readlink(link) == "/opt/gridmeter/.venv/bin/gridmeter"  # correct once the root is /
    release = os.readlink(root / "opt/gridmeter/.venv")
    assert release.startswith("releases/0.1.0-")
    assert "agent" in sh(gm, "--help").stdout and "check-config" in sh(gm, "agent", "--help").stdout
    env = root / "etc/gridmeter/agent.env"
    assert env.stat().st_mode & 0o777 == 0o600
    assert verify_unit(root, "gridmeter-agent.service").returncode == 0, verify_unit(root, "gridmeter-agent.service")

    # the documented example passes check-config once the key it names exists
    config = staged_example(root, "agent")
    key = root / "etc/gridmeter/device.key"
    bad = sh(gm, "agent", "check-config", config, ok=False)
    assert bad.returncode == 2 and "device.key" in bad.stderr
    sh(gm, "provision", "keygen", "--key-file", key)
    assert "OK (1 buses, 1 meters: HOUSE-1=eastron-sdm630@rs485-0/1)" in sh(gm, "agent", "check-config", config).stdout

    # idempotent: a second run installs nothing and keeps every file the installer made
    env.write_text("GRIDMETER_MQTT_PASSWORD=secret\n")
    key_bytes, config_text = key.read_bytes(), config.read_text()
    (root / "var/lib/gridmeter").mkdir(parents=True)
    (root / "var/lib/gridmeter/agent.sqlite").write_bytes(b"state")
    again = sh(INSTALL, "agent", "--root", root)
    assert "program already installed" in again.stdout and "installing gridmeter" not in again.stdout
    assert "config OK; not starting (no running systemd here)" in again.stdout
    assert os.readlink(root / "opt/gridmeter/.venv") == release

    # --upgrade: a new release, config / key / env / state untouched, the unit still verifies
    up = sh(INSTALL, "agent", "--upgrade", "--root", root)
    assert "installing gridmeter" in up.stdout
    assert os.readlink(root / "opt/gridmeter/.venv") != release
    assert (root / "opt/gridmeter" / release).is_dir()  # the previous release stays for a rollback
    assert key.read_bytes() == key_bytes and config.read_text() == config_text
    assert env.read_text() == "GRIDMETER_MQTT_PASSWORD=secret\n"
    assert (root / "var/lib/gridmeter/agent.sqlite").read_bytes() == b"state"
    assert verify_unit(root, "gridmeter-agent.service").returncode == 0

    # the gateway beside it shares the program; its unit verifies; its example passes check-config with its keys
    gw = sh(INSTALL, "gateway", "--root", root)
    assert "program already installed" in gw.stdout and "NOT started" in gw.stdout
    assert verify_unit(root, "gridmeter-gateway.service").returncode == 0
    gw_config = staged_example(root, "gateway")
    sh(gm, "gateway", "keygen", root / "etc/gridmeter/gateway.key")
    from gateway.oracle.authority_key import create_authority_key_file

    create_authority_key_file(root / "etc/gridmeter/chain-bridge.json")
    placeholder = sh(gm, "gateway", "check-config", "--config", gw_config, ok=False)
    assert placeholder.returncode == 2 and "dashboard.token" in placeholder.stderr  # never started on a placeholder
    token = sh(gm, "gateway", "gen-token").stdout.strip().split()[-1]
    checked = sh(gm, "gateway", "check-config", "--config", gw_config, env={"GRIDMETER_GATEWAY_DASHBOARD_TOKEN": token})
    assert "OK (gateway public key" in checked.stdout

    # a broken unit is caught: the verify step is not a formality
    os.rename(root / "opt/gridmeter/.venv", root / "opt/gridmeter/.venv-moved")
    broken = verify_unit(root, "gridmeter-agent.service")
    assert broken.returncode != 0 and "/opt/gridmeter/.venv/bin/gridmeter" in broken.stderr
    os.rename(root / "opt/gridmeter/.venv-moved", root / "opt/gridmeter/.venv")

    # uninstall keeps data; the program stays while the other unit needs it
    sh(UNINSTALL, "agent", "--root", root)
    assert not (root / "etc/systemd/system/gridmeter-agent.service").exists()
    assert (root / "opt/gridmeter").is_dir() and key.exists() and config.exists()
    sh(UNINSTALL, "gateway", "--root", root)
    assert not (root / "opt/gridmeter").exists() and not link.is_symlink()
    assert key.read_bytes() == key_bytes and (root / "var/lib/gridmeter/agent.sqlite").exists()
    # --purge removes config, keys and state too
    sh(UNINSTALL, "all", "--purge", "--root", root)
    assert not key.exists() and not (root / "var/lib/gridmeter").exists() and not env.exists()


def test_install_refuses_bad_arguments_with_a_clear_message(tmp_path: Path) -> None:
    out = sh(INSTALL, "--root", tmp_path, ok=False)
    assert out.returncode == 2 and "say what to install: agent or gateway" in out.stderr
    out = sh(INSTALL, "agent", "--bogus", ok=False)
    assert out.returncode == 2 and "unknown argument '--bogus'" in out.stderr
    out = sh(UNINSTALL, "nothing", ok=False)
    assert out.returncode == 2 and "unknown argument 'nothing'" in out.stderr
    assert "--upgrade" in sh(INSTALL, "--help").stdout
