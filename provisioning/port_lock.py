"""Exclusive use of a serial device during scan/commission: refuse while the agent (or anyone) holds it.

RS-485 is single-master: two programs polling one bus garble each other's frames and the meters see
collisions. The agent's bus owner locks the device with flock(LOCK_EX) (pyserial's `exclusive=True` does the
same); provisioning takes the same lock without waiting, so a running agent makes scan/commission stop with a
clear message instead of corrupting the agent's readings.
"""

from __future__ import annotations

import errno
import fcntl
import os

from provisioning.errors import PortBusyError, ProvisionError

__all__ = ["PortBusyError", "PortMissingError", "busy_message", "check_free"]

AGENT_SERVICE = "gridmeter-agent"


class PortMissingError(ProvisionError):
    """The serial device does not exist or cannot be opened."""


def _open(path: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except FileNotFoundError:
        hint = " (is the RS-485 adapter plugged in? see `ls /dev/ttyUSB* /dev/ttyAMA* /dev/serial*`)"
        raise PortMissingError(f"{path}: no such serial device{hint}") from None
    except OSError as exc:
        raise PortMissingError(f"{path}: cannot open ({exc.strerror}); run as root or a member of 'dialout'") from exc


def busy_message(path: str) -> str:
    return (f"{path} is in use by another process (normally the gridmeter agent): "
            f"stop it first (`sudo systemctl stop {AGENT_SERVICE}`), then retry; start it again afterwards")


def check_free(path: str) -> None:
    """Raise PortBusyError if someone holds the device's flock; leave it unlocked. (The scan/commission bus itself
    then holds the lock through agent.bus: pyserial opens the port with exclusive=True.)"""
    fd = _open(path)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise PortBusyError(busy_message(path)) from None
        raise PortMissingError(f"{path}: cannot lock ({exc.strerror})") from exc
    finally:
        os.close(fd)
