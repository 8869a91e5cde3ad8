"""Bus: the sole owner of one serial port or host:port, and the ONLY module that imports pymodbus.

Every request holds the bus lock, waits the bus/device pauses, runs with a per-request timeout and retries, and
translates pymodbus outcomes into our errors: BusTimeoutError (no reply), BusCorruptFrameError (bytes arrived but
no valid frame: CRC), BusExceptionResponse(code), BusError (anything else). Buses come from `open_bus(spec)`,
a registry keyed by device path / host:port: a second claim is an error (one owner per port, as in HA and evcc).

Stale frames (RTU and RTU-over-TCP; Modbus TCP has transaction ids): RTU has no transaction id, so a reply that
arrives after its request timed out could pass for the reply to the next request of the same shape, and a value of
block A be published as block B. Never: bytes received while no request waits are swallowed and counted; after a
failed attempt the next request waits out the line (the late frame plus t3.5 at the link's rate, extended while
bytes arrive); a frame whose unit, function code or byte count does not fit the request on the line is cut out and
counted; a request that could be confused with a late reply (even of the same block: an old value stamped now) is
sent only after a resynchronising read (agent/rtu_sync.py). Counted in `BusStats.stale_frames` / `stale_reasons`,
logged once per reason at WARNING.
"""

from __future__ import annotations

import asyncio
import logging
import os
import termios
import time
from dataclasses import dataclass, field
from typing import Literal

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU, FramerType

from agent.rtu_sync import STALE_REASONS, LineSync, frame_len, reply_quiet_s, split_idle, stale_reason

log = logging.getLogger(__name__)
# pymodbus logs every timeout at ERROR with a dump of the last frames. We translate each outcome into our own
# error and the poller logs once per outage (first failure WARNING, repeats DEBUG, recovery INFO), so keep
# pymodbus quiet unless someone configured its logger explicitly (e.g. DEBUG while diagnosing a bus).
_PYMODBUS_LOG = logging.getLogger("pymodbus.logging")
if _PYMODBUS_LOG.level == logging.NOTSET:
    _PYMODBUS_LOG.setLevel(logging.CRITICAL)

# One request may wait this long for its reply. mbmd's 300 ms default timed out under load; PR #258 suggested
# 600 ms. 1 s also covers a 125-register read at 2400 baud (~1.1 s on the wire is the worst case we poll).
DEFAULT_TIMEOUT_S = 1.0
# Two more tries: mbmd issue #333 (ABB next to SDM) saw the first try fail and the second succeed on most polls.
DEFAULT_RETRIES = 2
# Silence after any reply before the next request on an RTU line. Modbus requires >= t3.5 (4 ms at 9600); cheap
# USB-RS485 adapters and meters need more: Home Assistant's modbus hub waits msg_wait = 30 ms on serial.
DEFAULT_RTU_TURNAROUND_MS = 30
DEFAULT_TCP_TURNAROUND_MS = 0  # TCP has no shared line; gateways queue requests themselves
# Extra bus-wide pause between requests. Device-specific pauses (SDM >= 100 ms, openWB PR #2184) and the
# unit-switch pause (mbmd: 200 ms when the slave id changes) come from the meter profiles via DeviceTiming.
DEFAULT_INTER_REQUEST_DELAY_MS = 0
PTY_MAJORS = range(136, 144)  # Unix98 pty slaves: parity is meaningless on them (see _open_serial)
MAX_STALE_BUFFER = 4096  # bytes kept from a burst received while no request waited


class BusError(Exception):
    def __init__(self, bus: str, message: str) -> None:
        self.bus = bus
        super().__init__(f"bus {bus}: {message}")

    reason = "bus_error"


class BusTimeoutError(BusError):
    reason = "timeout"


class BusCorruptFrameError(BusTimeoutError):
    """Bytes came back but no valid frame (CRC error, truncated frame, noise)."""

    reason = "crc"


class BusExceptionResponse(BusError):
    def __init__(self, bus: str, code: int, message: str) -> None:
        self.code = code
        super().__init__(bus, message)

    @property
    def reason(self) -> str:  # type: ignore[override]
        return f"exception_code_{self.code}"


class BusClaimedError(BusError):
    reason = "claimed"


class BusStaleFrameError(BusTimeoutError):
    """The reply pymodbus returned does not fit the request (unit, function code or register count)."""

    reason = "stale_frame"


class BusUnsyncedError(BusTimeoutError):
    """A late reply of the request's shape may still arrive and the unit could not be resynchronised (or its
    resynchronising read answered an exception); the request was not sent."""

    reason = "unsynced"


@dataclass(frozen=True)
class BusSpec:
    name: str
    kind: Literal["rtu", "tcp", "rtu-over-tcp"]
    port: str | None = None  # serial device for rtu
    baudrate: int = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: int = 1
    bytesize: int = 8
    host: str | None = None
    tcp_port: int = 502
    timeout_s: float = DEFAULT_TIMEOUT_S
    retries: int = DEFAULT_RETRIES
    turnaround_ms: int = -1  # -1 = default for the kind (RTU 30 ms, TCP 0)
    inter_request_delay_ms: int = DEFAULT_INTER_REQUEST_DELAY_MS

    def __post_init__(self) -> None:
        if self.kind == "rtu" and not self.port:
            raise ValueError(f"bus {self.name}: kind rtu needs port")
        if self.kind in ("tcp", "rtu-over-tcp") and not self.host:
            raise ValueError(f"bus {self.name}: kind {self.kind} needs host")
        if self.turnaround_ms < 0:
            default = DEFAULT_RTU_TURNAROUND_MS if self.kind == "rtu" else DEFAULT_TCP_TURNAROUND_MS
            object.__setattr__(self, "turnaround_ms", default)

    @property
    def key(self) -> str:
        if self.kind == "rtu":
            return os.path.realpath(str(self.port))
        return f"{self.host}:{self.tcp_port}"


@dataclass(frozen=True)
class DeviceTiming:
    """Per-unit pauses, from the meter's profile `[read]` table."""

    inter_request_delay_ms: int = 0
    unit_switch_delay_ms: int = 0
    turnaround_ms: int = 0


@dataclass
class BusStats:
    requests: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    exceptions: int = 0
    retries: int = 0
    wait_s: float = 0.0  # time spent in pauses (not on the wire)
    last_request_s: float = field(default=0.0)  # duration of the last successful request (wire + overhead)
    stale_frames: int = 0  # frames discarded as not the reply to the request on the line (RTU)
    stale_bytes: int = 0  # bytes of those frames and of noise received while no request waited
    stale_reasons: dict[str, int] = field(default_factory=dict)  # STALE_REASONS key -> frames (noise: bursts)
    resyncs: int = 0  # resynchronising reads sent before an ambiguous request


_REGISTRY: dict[str, Bus] = {}


def open_bus(spec: BusSpec) -> Bus:
    """Claim the port / host:port of `spec`. A second claim while the first is open raises BusClaimedError."""
    key = spec.key
    if key in _REGISTRY:
        raise BusClaimedError(spec.name, f"{key} is already owned by bus {_REGISTRY[key].spec.name}")
    bus = Bus(spec)
    _REGISTRY[key] = bus
    return bus


class Bus:
    def __init__(self, spec: BusSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.stats = BusStats()
        self.effective_parity = spec.parity
        self._lock = asyncio.Lock()
        self._client: AsyncModbusSerialClient | AsyncModbusTcpClient | None = None
        self._timing: dict[int, DeviceTiming] = {}
        self._last_end = 0.0  # monotonic time of the end of the last transaction
        self._last_unit: int | None = None
        self._last_by_unit: dict[int, float] = {}
        self._rx_bytes, self._closed = 0, False
        self._rtu = spec.kind != "tcp"  # RTU framing: no transaction id
        self._pending: tuple[int, int, int] | None = None  # (unit, fc, count) of the request about to be sent
        self._expect: tuple[int, int, int] | None = None  # the same once it is on the line
        self._stale_rx = bytearray()  # received while no request waited
        self._rx_last, self._logged = 0.0, set[str]()
        self._dirty: tuple[float, float] | None = None  # (end of a failed attempt, quiet time its late frame needs)
        self.sync = LineSync()

    def set_device_timing(self, unit_id: int, timing: DeviceTiming) -> None:
        self._timing[unit_id] = timing

    # ---- connection -----------------------------------------------------------------------------------------------

    def _trace(self, sending: bool, data: bytes) -> bytes:
        """pymodbus' packet hook: `data` is what goes on the wire, or its whole receive buffer (what we return is
        what it decodes; the buffer is set to the same, so its cut stays consistent)."""
        if sending:
            self._expect = self._pending
            return data
        self._rx_last = time.monotonic()
        ctx = self._client.ctx if self._client is not None else None
        if not self._rtu:
            self._rx_bytes += len(data)
            return data
        if self._expect is None:  # nobody asked: stale; accounted before the next request
            self._stale_rx += data[:max(0, MAX_STALE_BUFFER - len(self._stale_rx))]
            if ctx is not None:
                ctx.recv_buffer = b""
            return b""
        buf = data
        while (n := frame_len(buf, FramerRTU.check_CRC)) is not None and (
                why := stale_reason(buf[:n], *self._expect)) is not None:
            self._count_stale(why, buf[:n])
            buf = buf[n:]
        if buf is not data and ctx is not None:
            ctx.recv_buffer = buf
        self._rx_bytes += len(buf)
        return buf

    def _count_stale(self, reason: str, data: bytes) -> None:
        self.stats.stale_frames += reason != "noise"
        self.stats.stale_bytes += len(data)
        self.stats.stale_reasons[reason] = self.stats.stale_reasons.get(reason, 0) + 1
        if reason != "noise" and len(data) >= 5:
            self.sync.discarded(data)
        level = logging.DEBUG if reason in self._logged else logging.WARNING
        self._logged.add(reason)
        log.log(level, "bus %s: discarded %d bytes: %s (%s)", self.name, len(data), STALE_REASONS[reason],
                data[:16].hex(" "))

    def _make_client(self, parity: str) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        s = self.spec
        if s.kind == "rtu":
            return AsyncModbusSerialClient(
                str(s.port), framer=FramerType.RTU, baudrate=s.baudrate, bytesize=s.bytesize, parity=parity,
                stopbits=s.stopbits, timeout=s.timeout_s, retries=0, reconnect_delay=0, trace_packet=self._trace,
            )
        framer = FramerType.SOCKET if s.kind == "tcp" else FramerType.RTU
        return AsyncModbusTcpClient(str(s.host), port=s.tcp_port, framer=framer, timeout=s.timeout_s, retries=0,
                                    reconnect_delay=0, trace_packet=self._trace)

    async def _connect(self) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        if self._closed:
            raise BusError(self.name, "closed")
        if self._client is not None and self._client.connected:
            return self._client
        if self._client is not None:
            self._client.close()
        parity = self.spec.parity
        if self.spec.kind == "rtu" and parity != "N" and self._pty_drops_parity():
            # Some kernels' pty drivers drop PARENB and then reject the settings (EINVAL, seen on 6.18). A pty has
            # no line, so parity means nothing there: open it without. Never taken on a real UART.
            log.warning("bus %s: %s is a pty that does not keep parity %s; opened without parity",
                        self.name, self.spec.port, parity)
            parity = "N"
        self.effective_parity = parity
        try:
            self._client = await self._open(parity)
        except termios.error as e:
            raise BusError(self.name, f"cannot configure {self.spec.port}: {e}") from None
        return self._client

    async def _open(self, parity: str) -> AsyncModbusSerialClient | AsyncModbusTcpClient:
        client = self._make_client(parity)
        try:
            ok = await client.connect()
        except termios.error:
            client.close()
            raise
        except (OSError, ModbusException) as e:
            client.close()
            raise BusError(self.name, f"cannot open {self.spec.key}: {e}") from None
        if not ok:
            client.close()
            raise BusError(self.name, f"cannot open {self.spec.key}")
        return client

    def _pty_drops_parity(self) -> bool:
        """True if the port is a pty whose driver does not store PARENB (probed on our own fd)."""
        try:
            if os.major(os.stat(str(self.spec.port)).st_rdev) not in PTY_MAJORS:
                return False
            fd = os.open(str(self.spec.port), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        except OSError:
            return False
        try:
            orig = termios.tcgetattr(fd)
            probe = list(orig)
            probe[0] ^= termios.IGNBRK  # a kept change, so tcsetattr cannot fail with "nothing changed"
            probe[2] |= termios.PARENB
            termios.tcsetattr(fd, termios.TCSANOW, probe)
            dropped = not termios.tcgetattr(fd)[2] & termios.PARENB
            termios.tcsetattr(fd, termios.TCSANOW, orig)
            return dropped
        except termios.error:
            return True
        finally:
            os.close(fd)

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
        if _REGISTRY.get(self.spec.key) is self:
            del _REGISTRY[self.spec.key]

    # ---- requests -------------------------------------------------------------------------------------------------

    async def _pause(self, unit_id: int) -> None:
        t = self._timing.get(unit_id, DeviceTiming())
        prev = self._timing.get(self._last_unit, DeviceTiming()) if self._last_unit is not None else DeviceTiming()
        gap_ms = max(self.spec.turnaround_ms, self.spec.inter_request_delay_ms, prev.turnaround_ms)
        until = self._last_end + gap_ms / 1000
        if self._last_unit is not None and self._last_unit != unit_id:
            until = max(until, self._last_end + t.unit_switch_delay_ms / 1000)
        if unit_id in self._last_by_unit:
            until = max(until, self._last_by_unit[unit_id] + t.inter_request_delay_ms / 1000)
        delay = until - time.monotonic()
        if delay > 0:
            self.stats.wait_s += delay
            await asyncio.sleep(delay)

    async def read_registers(
        self, unit_id: int, function_code: int, address: int, count: int, *, timeout_s: float | None = None,
        retries: int | None = None,
    ) -> list[int]:
        """FC03/FC04 read of `count` registers; retried on timeout/CRC, never on an exception response.
        `retries` overrides the bus default (the poller probes failing meters with 0)."""
        if function_code not in (3, 4):
            raise ValueError(f"function_code must be 3 or 4 (got {function_code})")
        if not 1 <= count <= 125 or not 0 <= address <= 0xFFFF - count + 1 or not 0 <= unit_id <= 255:
            raise ValueError(f"invalid read unit={unit_id} address={address} count={count}")
        timeout = self.spec.timeout_s if timeout_s is None else timeout_s
        async with self._lock:
            last: BusError | None = None
            for attempt in range((self.spec.retries if retries is None else retries) + 1):
                if attempt:
                    self.stats.retries += 1
                await self._pause(unit_id)
                try:
                    await self._settle()
                    if self._rtu and self.sync.ambiguous(unit_id, function_code, count, time.monotonic()):
                        await self._resync(unit_id, function_code, address, count, timeout)
                    return await self._request(unit_id, function_code, address, count, timeout)
                except BusExceptionResponse:
                    raise
                except BusTimeoutError as e:
                    last = e
                finally:
                    self._last_end = time.monotonic()
                    self._last_unit = unit_id
                    self._last_by_unit[unit_id] = self._last_end
            assert last is not None
            raise last

    # ---- stale frames (see the module docstring) ------------------------------------------------------------------

    async def _settle(self) -> None:
        """Before a request: after a failed attempt wait out the line (its late frame plus t3.5, extended while bytes
        keep arriving), then account for and drop everything received while no request waited."""
        if self._dirty is not None:
            failed_at, quiet = self._dirty
            while (delay := max(failed_at, self._rx_last) + quiet - time.monotonic()) > 0:
                self.stats.wait_s += delay
                await asyncio.sleep(delay)
            self._dirty = None
        if self._stale_rx:
            for reason, data in split_idle(bytes(self._stale_rx), FramerRTU.check_CRC):
                self._count_stale(reason, data)
            self._stale_rx.clear()

    async def _resync(self, unit_id: int, fc: int, address: int, count: int, timeout: float) -> None:
        what = f"unit {unit_id} FC{fc:02d} {address:#06x}+{count}"
        probe = self.sync.resync_read(unit_id, fc, address, count)
        if probe is None:
            raise BusUnsyncedError(self.name, f"{what}: a late reply of the same size may still arrive and every "
                                              "read size that could resynchronise is taken by one too")
        self.stats.resyncs += 1
        try:
            await self._request(unit_id, *probe, timeout)
        except BusTimeoutError as e:  # the same class (reason), said to be the resynchronising read before `what`
            raise type(e)(self.name, f"{what}: resynchronising read: {str(e).split(': ', 1)[-1]}") from None
        except BusExceptionResponse as e:
            raise BusUnsyncedError(self.name, f"{what}: resynchronising read FC{probe[0]:02d} {probe[1]:#06x}"
                                              f"+{probe[2]} answered exception code {e.code}") from None
        finally:
            self._last_end = self._last_by_unit[unit_id] = time.monotonic()
        await self._pause(unit_id)  # the line's turnaround between the resynchronising read and the request

    async def _request(self, unit_id: int, fc: int, address: int, count: int, timeout: float) -> list[int]:
        client = await self._connect()
        client.ctx.comm_params.timeout_connect = timeout
        self._rx_bytes = 0
        self.stats.requests += 1
        started = time.monotonic()
        what = f"unit {unit_id} FC{fc:02d} {address:#06x}+{count}"
        self._pending = (unit_id, fc, count)
        answered = False
        try:
            call = client.read_holding_registers if fc == 3 else client.read_input_registers
            response = await asyncio.wait_for(call(address, count=count, device_id=unit_id), timeout + 1.0)
            if response.isError():
                answered = True
                self.stats.exceptions += 1
                if self._rtu and self.sync.in_doubt(unit_id):  # maybe a late answer to an earlier request
                    self.sync.unanswered(unit_id, fc, address, count, time.monotonic())
                code = int(getattr(response, "exception_code", 0))
                raise BusExceptionResponse(self.name, code, f"{what}: exception code {code}")
            regs = list(response.registers)
            why = ("wrong_unit" if response.dev_id != unit_id else "wrong_function" if response.function_code != fc
                   else "wrong_byte_count" if len(regs) != count else None)
            if why is not None:
                self._count_stale(why, b"")
                raise BusStaleFrameError(self.name, f"{what}: {STALE_REASONS[why]} (unit {response.dev_id}, "
                                                    f"FC{response.function_code:02d}, {len(regs)} registers)")
            answered = True
        except (TimeoutError, ModbusIOException):
            if self._rx_bytes:
                self.stats.crc_errors += 1
                raise BusCorruptFrameError(self.name, f"{what}: {self._rx_bytes} bytes but no valid frame") from None
            self.stats.timeouts += 1
            raise BusTimeoutError(self.name, f"{what}: no reply within {timeout:.3f}s") from None
        except (ConnectionException, OSError) as e:  # OSError: USB adapter unplugged, serial write failed
            self._drop_client()
            raise BusError(self.name, f"{what}: connection lost: {e}") from None
        except ModbusException as e:
            raise BusError(self.name, f"{what}: {e}") from None
        finally:
            self._pending = self._expect = None
            if not answered and self._rtu:  # its reply may still come: wait out the line, and remember the request
                s = self.spec
                self._dirty = (time.monotonic(), reply_quiet_s(count, s.baudrate, s.parity, s.stopbits, s.bytesize))
                self.sync.unanswered(unit_id, fc, address, count, time.monotonic())
        if self._rtu:
            self.sync.answered(unit_id, fc, address, count)
        self.stats.last_request_s = time.monotonic() - started
        return regs

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        self._pending = self._expect = None
