"""firmware_config/pi/rs485-mode.py: every bad input is a one-line message and an exit code, never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "firmware_config" / "pi" / "rs485-mode.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=30,
                          check=False)


def test_missing_device_names_it() -> None:
    r = run("/dev/ttyNOPE", "--show")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith("/dev/ttyNOPE: cannot open")


@pytest.mark.parametrize("value", ["-1", "1001", "x"])
def test_delay_is_bounded(value: str) -> None:
    r = run("/dev/null", "--delay-before-ms", value)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--delay-before-ms" in r.stderr


def test_device_without_rs485_support_says_so() -> None:
    """A pty has no RS-485 mode: the ioctl fails with a message suggesting an auto-direction adapter."""
    leader, follower = os.openpty()
    try:
        r = run(os.ttyname(follower), "--show")
    finally:
        os.close(leader)
        os.close(follower)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "does not support RS-485 mode" in r.stderr
