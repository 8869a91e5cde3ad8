"""The systemd notify protocol (Type=notify: READY, WATCHDOG, STOPPING) over the plain NOTIFY_SOCKET datagram
socket, no dependency. A no-op outside systemd. Used by the agent and the gateway services."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, address: str) -> None:
        self.address = "\0" + address[1:] if address.startswith("@") else address

    @classmethod
    def from_env(cls) -> Notifier | None:
        addr = os.environ.get("NOTIFY_SOCKET")
        return cls(addr) if addr else None

    def send(self, state: str) -> None:
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                s.sendto(state.encode(), self.address)
        except OSError as exc:
            log.warning("sd_notify %s failed: %s", state, exc)

    @staticmethod
    def watchdog_interval_s() -> float | None:
        usec = os.environ.get("WATCHDOG_USEC")
        pid = os.environ.get("WATCHDOG_PID")
        if not usec or (pid and pid != str(os.getpid())):
            return None
        try:
            return int(usec) / 2_000_000  # ping at half the timeout, as sd_watchdog_enabled(3) advises
        except ValueError:
            return None


def sd_notify(message: str) -> None:
    """One notification to systemd, if this process runs under it (NOTIFY_SOCKET set)."""
    notifier = Notifier.from_env()
    if notifier is not None:
        notifier.send(message)
