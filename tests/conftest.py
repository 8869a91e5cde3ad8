"""Shared fixtures. Binaries (mosquitto, socat, clang-14, chromium) are installed by scripts/test,
never skipped: a missing binary is a failing test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed.broker import Broker

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A real mosquitto on a free 127.0.0.1 port, anonymous, max_queued_messages raised."""
    b = Broker(workdir=tmp_path / "broker")
    b.start()
    try:
        yield b
    finally:
        b.close()
