"""agent.bus: spec validation, per-kind defaults and the one-owner registry (no I/O: a Bus opens lazily)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.bus import (
    DEFAULT_RTU_TURNAROUND_MS,
    BusClaimedError,
    BusCorruptFrameError,
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
