"""Ending the bench's child processes (socat, the RTU bus process): SIGTERM, wait with a deadline, then SIGKILL."""

from __future__ import annotations

import subprocess

__all__ = ["DEFAULT_STOP_TIMEOUT_S", "stop_child"]

# socat and the bus process exit within milliseconds of SIGTERM; 10 s only matters on a starved CI machine.
DEFAULT_STOP_TIMEOUT_S = 10.0


def stop_child(proc: subprocess.Popen[bytes] | subprocess.Popen[str],
               timeout_s: float = DEFAULT_STOP_TIMEOUT_S) -> None:
    """Terminate `proc` if it still runs and reap it (kill after `timeout_s`); never leaves a zombie."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
