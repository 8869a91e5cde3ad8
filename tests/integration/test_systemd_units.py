"""The systemd units in systemd/: `systemd-analyze security --offline=true` exposure <= 2.0 and
`systemd-analyze verify` clean (Debian's systemd package ships systemd-analyze; scripts/bootstrap installs it).

Before this check: agent 2.4, gateway 3.4 (no SystemCallFilter/SystemCallArchitectures/MemoryDenyWriteExecute in the
gateway; neither unit set ProtectProc, ProcSubset, RemoveIPC, PrivateMounts)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
UNITS = ["gridmeter-agent.service", "gridmeter-gateway.service"]
MAX_EXPOSURE = 2.0
INSTALLED_BINARY = "/opt/gridmeter/.venv/bin/gridmeter"  # where the units expect the installed CLI


def analyze() -> str:
    exe = shutil.which("systemd-analyze")
    assert exe is not None, "systemd-analyze is missing: install Debian's systemd package (scripts/bootstrap does)"
    return exe


@pytest.mark.parametrize("unit", UNITS)
def test_security_exposure_at_most_2(unit: str) -> None:
    out = subprocess.run([analyze(), "security", "--offline=true", "--no-pager", str(REPO / "systemd" / unit)],
                         capture_output=True, text=True, timeout=120, check=False)
    m = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", out.stdout)
    assert m is not None, out.stdout + out.stderr
    exposure = float(m[1])
    print(f"{unit}: exposure {exposure}")
    assert exposure <= MAX_EXPOSURE, out.stdout


@pytest.mark.parametrize("unit", UNITS)
def test_verify_clean(unit: str, tmp_path: Path) -> None:
    """verify also checks that ExecStart's binary exists. The unit is verified as it is, except that the installed
    path is replaced by this checkout's own CLI (same program, a path that exists here)."""
    text = (REPO / "systemd" / unit).read_text()
    assert f"ExecStart={INSTALLED_BINARY} " in text
    local = REPO / ".venv" / "bin" / "gridmeter"
    assert local.is_file(), f"{local}: run scripts/bootstrap"
    copy = tmp_path / unit
    copy.write_text(text.replace(INSTALLED_BINARY, str(local)))
    out = subprocess.run([analyze(), "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=120,
                         check=False)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", ""), out.stdout + out.stderr


def test_agent_keeps_serial_ports_and_adjtimex_gateway_keeps_network() -> None:
    """Hardening must not break the services: the agent still reaches RS-485 adapters (dialout + device ACL) and
    reads the kernel's clock-sync state; both still open Internet and local sockets."""
    agent = (REPO / "systemd" / "gridmeter-agent.service").read_text()
    gateway = (REPO / "systemd" / "gridmeter-gateway.service").read_text()
    assert "SupplementaryGroups=dialout" in agent and "DeviceAllow=char-ttyUSB rw" in agent
    assert "PrivateDevices=yes" not in agent and "PrivateNetwork=yes" not in agent + gateway
    lines = [ln for ln in agent.splitlines() if ln.startswith("SystemCallFilter=")]
    assert lines[-1] == "SystemCallFilter=adjtimex clock_adjtime"  # re-allowed after the @privileged deny (@clock)
    for unit in (agent, gateway):
        assert "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" in unit
        assert "SystemCallErrorNumber=EPERM" in unit  # a refused call is an error, not a SIGSYS kill
