"""agent.bus: spec validation, per-kind defaults and the one-owner registry (no I/O: a Bus opens lazily)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.bus import (
    DEFAULT_RTU_TURNAROUND_MS,
    BusClaimedError,
    BusCorruptFrameError,
    BusError,
    BusExceptionResponse,
    BusSpec,
    BusTimeoutError,
    open_bus,
)


def test_defaults_per_kind() -> None:
    assert BusSpec("a", "rtu", port="/dev/ttyAMA0").turnaround_ms == DEFAULT_RTU_TURNAROUND_MS
    assert BusSpec("b", "tcp", host="10.0.0.2").turnaround_ms == 0
    assert BusSpec("c", "rtu", port="/dev/ttyAMA0", turnaround_ms=5).turnaround_ms == 5


@pytest.mark.parametrize(("kw", "message"), [
    ({"kind": "rtu"}, "kind rtu needs port"),
    ({"kind": "tcp"}, "kind tcp needs host"),
    ({"kind": "rtu-over-tcp", "port": "/dev/x"}, "needs host"),
])
def test_spec_errors(kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BusSpec("x", **kw)


async def test_registry_one_owner_per_resource(tmp_path: Path) -> None:
    dev = tmp_path / "ttyUSB0"
    dev.touch()
    link = tmp_path / "rs485"
    link.symlink_to(dev)
    first = open_bus(BusSpec("a", "rtu", port=str(dev)))
    try:
        with pytest.raises(BusClaimedError, match="already owned by bus a"):
            open_bus(BusSpec("b", "rtu", port=str(link)))  # same device through a symlink
        other = open_bus(BusSpec("c", "tcp", host="127.0.0.1", tcp_port=1502))
        await other.close()
    finally:
        await first.close()
    again = open_bus(BusSpec("d", "rtu", port=str(dev)))
    await again.close()


def test_error_reasons() -> None:
    assert BusTimeoutError("b", "x").reason == "timeout"
    assert BusCorruptFrameError("b", "x").reason == "crc"
    assert BusExceptionResponse("b", 2, "x").reason == "exception_code_2"
    assert str(BusTimeoutError("rs485-0", "unit 3 FC04 0x0000+76: no reply")).startswith("bus rs485-0: unit 3")


class _UnpluggedClient:
    """Stands in for the pymodbus client of a USB adapter that was just unplugged (the write fails)."""

    connected = True
    closed = 0

    class ctx:  # mirrors pymodbus client.ctx.comm_params
        class comm_params:
            timeout_connect = 1.0

    async def read_input_registers(self, *_a: object, **_kw: object) -> None:
        raise OSError(5, "Input/output error")

    def close(self) -> None:
        self.closed += 1


async def test_os_error_is_a_bus_error_and_drops_the_connection(tmp_path: Path) -> None:
    """An OSError from the port must not escape the bus (one failing device never stops the poll loop)."""
    dev = tmp_path / "ttyUSB9"
    dev.touch()
    bus = open_bus(BusSpec("usb", "rtu", port=str(dev), retries=0, turnaround_ms=0))
    client = _UnpluggedClient()
    bus._client = client  # type: ignore[assignment]
    try:
        with pytest.raises(BusError, match="connection lost") as exc:
            await bus.read_registers(1, 4, 0, 2)
        assert type(exc.value) is BusError and exc.value.reason == "bus_error"
        assert client.closed == 1 and bus._client is None  # reopened on the next request
    finally:
        await bus.close()
