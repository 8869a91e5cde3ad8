"""Free TCP ports on 127.0.0.1 for servers started by tests, benches and the demo.

Ports come from below Linux's ephemeral range (32768-60999 by default): a port the kernel handed out with
bind(0) is an ephemeral one, which any process's outgoing connection may take the moment it is released, so a
server restarted on its old port (a killed gateway coming back) could find it taken. Below the range only
another listener can collide; each process also never hands out the same port twice.
"""

from __future__ import annotations

import random
import socket
import time

_RANGE = (20_000, 32_000)
_given: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randrange(*_RANGE)
        if port not in _given and _bindable(port):
            _given.add(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:  # the range is crowded: any free port
        s.bind(("127.0.0.1", 0))
        fallback: int = s.getsockname()[1]
        return fallback


def wait_port(port: int, timeout_s: float = 10.0, host: str = "127.0.0.1") -> None:
    """Poll until something accepts connections on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout_s}s") from None
            time.sleep(0.02)
