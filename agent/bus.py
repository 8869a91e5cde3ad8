"""Bus: the sole owner of one serial port or host:port, and the ONLY module that imports pymodbus.

Every request holds the bus lock, waits the bus/device pauses, runs with a per-request timeout and retries, and
translates pymodbus outcomes into our errors: BusTimeoutError (no reply), BusCorruptFrameError (bytes arrived but
no valid frame: CRC), BusExceptionResponse(code), BusError (anything else). Buses come from `open_bus(spec)`,
a registry keyed by device path / host:port: a second claim is an error (one owner per port, as in HA and evcc).
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
from pymodbus.framer import FramerType

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
        self._rx_bytes = 0
        self._closed = False

    def set_device_timing(self, unit_id: int, timing: DeviceTiming) -> None:
        self._timing[unit_id] = timing

    # ---- connection -----------------------------------------------------------------------------------------------

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._rx_bytes += len(data)
        return data

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

    async def _request(self, unit_id: int, fc: int, address: int, count: int, timeout: float) -> list[int]:
        client = await self._connect()
        client.ctx.comm_params.timeout_connect = timeout
        self._rx_bytes = 0
        self.stats.requests += 1
        started = time.monotonic()
        what = f"unit {unit_id} FC{fc:02d} {address:#06x}+{count}"
        try:
            call = client.read_holding_registers if fc == 3 else client.read_input_registers
            response = await asyncio.wait_for(call(address, count=count, device_id=unit_id), timeout + 1.0)
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
        if response.isError():
            self.stats.exceptions += 1
            code = int(getattr(response, "exception_code", 0))
            raise BusExceptionResponse(self.name, code, f"{what}: exception code {code}")
        regs = list(response.registers)
        if len(regs) != count:
            raise BusError(self.name, f"{what}: {len(regs)} registers in reply")
        self.stats.last_request_s = time.monotonic() - started
        return regs

    def _drop_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
