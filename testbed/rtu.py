"""VirtualRtuBus: a socat pty pair as the RS-485 link + one pymodbus SimSerialServer serving several meters.

    socat -d -d pty,rawer,link=<dir>/meters pty,rawer,link=<dir>/client      (socat(1))

The agent opens `client_port`. A pty does not enforce baud or parity, so the bus holds its own fd on the client
side and reads the termios settings the client set (tcgetattr): a meter answers only when they match its framing.
Line timing: each reply waits the RTU wire time of request + response + 2 x t3.5 at the meter's framing.

In-process: `async with VirtualRtuBus(...) as bus` or `start()/stop()`; in a thread: `run_in_thread()`;
as a separate process (meters keep counting while a test SIGKILLs the agent):
`python -m testbed.rtu --config bus.json` (see testbed/rtu_process.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import subprocess
import tempfile
import termios
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from pymodbus.framer import FramerType

from testbed.child_process import stop_child
from testbed.meter import Framing, SimulatedMeter
from testbed.simserver import MeterServer, SimSerialServer

log = logging.getLogger(__name__)
DEFAULT_START_TIMEOUT_S = 10.0  # socat creates both links in ~10 ms; generous for a loaded 2-core CI box
_SPEEDS = {getattr(termios, f"B{b}"): b for b in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)}
_SIZES = {termios.CS5: 5, termios.CS6: 6, termios.CS7: 7, termios.CS8: 8}


def termios_framing(fd: int) -> Framing | None:
    """The framing a process configured on a tty (None if its speed is not a standard rate).

    Some pty drivers (seen on Linux 6.18) silently drop PARENB but keep PARODD: then even parity reads as "N"
    and odd parity is still seen through PARODD; see `pty_keeps_parenb`.
    """
    _iflag, _oflag, cflag, _lflag, _ispeed, ospeed, _cc = termios.tcgetattr(fd)
    baud = _SPEEDS.get(ospeed)
    if baud is None:
        return None
    parity = "O" if cflag & termios.PARODD else ("E" if cflag & termios.PARENB else "N")
    return Framing(baudrate=baud, parity=parity, stopbits=2 if cflag & termios.CSTOPB else 1,
                   bytesize=_SIZES[cflag & termios.CSIZE])


def pty_keeps_parenb(fd: int) -> bool:
    """Probe whether this kernel's pty stores PARENB (Debian 12 / 6.1: yes; observed 6.18: no)."""
    orig = termios.tcgetattr(fd)
    probe = list(orig)
    probe[0] ^= termios.IGNBRK  # a change the driver keeps, so tcsetattr cannot fail with "nothing changed"
    probe[2] = (probe[2] | termios.PARENB) & ~termios.PARODD
    try:
        termios.tcsetattr(fd, termios.TCSANOW, probe)
        return bool(termios.tcgetattr(fd)[2] & termios.PARENB)
    finally:
        termios.tcsetattr(fd, termios.TCSANOW, orig)


def mark_client_side(fd: int) -> None:
    """Set IGNBRK (meaningless on a pty) so the client's next tcsetattr always changes something.

    A pty driver that drops PARENB makes tcsetattr fail with EINVAL when nothing else changes (e.g. pyserial
    opening 9600 8E1 right after a 9600 8N1 session): pyserial clears IGNBRK, so with it set the open succeeds.
    """
    attrs = termios.tcgetattr(fd)
    if not attrs[0] & termios.IGNBRK:
        attrs[0] |= termios.IGNBRK
        termios.tcsetattr(fd, termios.TCSANOW, attrs)


class SocatLink:
    """Two linked ptys; `meter_path` for the simulator, `client_path` for the agent."""

    # socat -d -d logs this once both ptys are opened AND configured. The links appear earlier: on a loaded machine
    # socat was seen applying its termios settings (through the master) after a client had opened the slave and
    # set 9600 8N1, leaving the line at B0, so the simulated meters (which check the client's framing) stayed
    # silent. Ready means this line, not the links.
    READY_MARK = b"starting data transfer loop"

    def __init__(self, workdir: Path) -> None:
        self.meter_path, self.client_path = str(workdir / "meters"), str(workdir / "client")
        self.log_path = workdir / "socat.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> None:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                ["socat", "-d", "-d", f"pty,rawer,link={self.meter_path}", f"pty,rawer,link={self.client_path}"],
                stdout=subprocess.DEVNULL, stderr=log,
            )
        deadline = time.monotonic() + timeout_s
        while not (os.path.exists(self.meter_path) and os.path.exists(self.client_path)
                   and self.READY_MARK in self.log_path.read_bytes()):
            if self.proc.poll() is not None:
                raise RuntimeError(f"socat exited with {self.proc.returncode} before the pty pair was ready: "
                                   f"{self.log_path.read_text(errors='replace')[-500:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"socat did not set up {self.client_path} within {timeout_s}s")
            time.sleep(0.005)

    def stop(self) -> None:
        if self.proc is not None:
            stop_child(self.proc, timeout_s=5)
        self.proc = None


class VirtualRtuBus:
    def __init__(
        self, meters: Sequence[SimulatedMeter], baudrate: int = 9600, parity: str = "N", stopbits: int = 1,
        bytesize: int = 8, *, line_timing: bool = True, turnaround_ms: int = 0, enforce_framing: bool = True,
        workdir: Path | str | None = None,
    ) -> None:
        self.framing = Framing(baudrate, parity, stopbits, bytesize)
        self.meters = list(meters)
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="gridmeter-rtu-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.link = SocatLink(self.workdir)
        self._client_fd: int | None = None
        self.parity_observable = True  # set by start(): False when the pty drops PARENB (even == none)
        self.core = MeterServer(self.meters, framing=self.framing, line_timing=line_timing,
                                turnaround_ms=turnaround_ms,
                                client_framing=self._client_framing if enforce_framing else None)
        self._server: SimSerialServer | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def client_port(self) -> str:
        return self.link.client_path

    def set_fault(self, unit_id: int, **kw: object) -> None:
        self.core.set_fault(unit_id, **kw)

    def clear_faults(self) -> None:
        self.core.clear_faults()

    def _client_framing(self) -> Framing | None:
        if self._client_fd is None:
            return None
        try:
            framing = termios_framing(self._client_fd)
        except termios.error as exc:
            log.warning("cannot read the client side's termios: %s", exc)
            return None
        if framing is None:
            log.warning("client side speed is not a standard rate: %s", termios.tcgetattr(self._client_fd))
        try:
            mark_client_side(self._client_fd)
        except termios.error as exc:  # only a marker for the next open: the framing read above still holds
            log.warning("cannot mark the client side: %s", exc)
        return framing

    def comparable(self, framing: Framing) -> Framing:
        """What of a framing the pty can show. Without PARENB parity is not observable at all (and the agent's
        Bus opens such a pty without parity), so parity is left out of the comparison."""
        if self.parity_observable or framing.parity == "N":
            return framing
        return Framing(framing.baudrate, "N", framing.stopbits, framing.bytesize)

    async def start(self) -> VirtualRtuBus:
        try:
            await self._start()
        except BaseException:
            await self.stop()  # never leave socat or the fd behind
            raise
        return self

    async def _start(self) -> None:
        self.link.start()
        # Our own fd on the client side: read its termios, and keep the pty alive across agent restarts
        # (socat would otherwise see the slave close when a SIGKILLed agent's fd goes away).
        self._client_fd = os.open(self.link.client_path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self.parity_observable = pty_keeps_parenb(self._client_fd)
        mark_client_side(self._client_fd)
        self.core.comparable = self.comparable
        f = self.framing
        # The meter side's own termios do not matter (a pty passes bytes at memory speed whatever is set) and
        # some pty drivers reject parity (see pty_keeps_parenb): framing is enforced on the client side instead.
        self._server = SimSerialServer(
            self.core.devices(), framer=FramerType.RTU, port=self.link.meter_path, baudrate=f.baudrate,
            parity="N", stopbits=f.stopbits, bytesize=f.bytesize, trace_packet=self.core.trace_packet,
        )
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.shutdown()
            self._server = None
        if self._client_fd is not None:
            os.close(self._client_fd)
            self._client_fd = None
        self.link.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    async def __aenter__(self) -> VirtualRtuBus:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- thread mode (sync tests, bench) ---------------------------------------------------------------------------

    def run_in_thread(self, timeout_s: float = DEFAULT_START_TIMEOUT_S) -> VirtualRtuBus:
        """Serve from a private event loop in a daemon thread; `stop_thread()` ends it."""
        started = threading.Event()
        errors: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.start())
            except BaseException as e:  # reported to the caller below
                errors.append(e)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        self._thread = threading.Thread(target=main, name="virtual-rtu-bus", daemon=True)
        self._thread.start()
        if not started.wait(timeout_s):
            raise TimeoutError("virtual RTU bus did not start")
        if errors:
            raise errors[0]
        return self

    def stop_thread(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._thread, self._loop = None, None


if __name__ == "__main__":
    from testbed.rtu_process import main

    raise SystemExit(main())
