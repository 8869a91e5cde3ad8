"""A corrupt agent store at start: moved aside (with its -wal/-shm), a fresh store in its place, the event recorded.

What lives where: agent.store is the store itself (Store, its durability order and overflow policy);
agent.store_schema opens the SQLite file and turns its failures into StoreError / StoreCorruptError; this module
is what the agent service opens the store with (open_or_replace), so a damaged SD-card file does not become a
restart loop. The newest KEEP_CORRUPT_COPIES copies are kept for inspection.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from agent.store import Store
from agent.store_schema import StoreCorruptError, StoreError

log = logging.getLogger(__name__)

# Corrupt stores moved aside are kept for inspection, the newest few only: a failing SD card that corrupts the
# store at every start must not fill the disk with copies.
KEEP_CORRUPT_COPIES = 3
CORRUPT_SUFFIX = ".corrupt-"
STORE_REPLACED_EVENT = "store_corrupt_replaced"


def open_or_replace(path: Path, *, max_readings: int, overflow: Literal["drop_oldest", "stop_reading"] = "drop_oldest",
                    wall_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000) -> tuple[Store, Path | None]:
    """Open the agent's store; if the file is corrupt, move it (and its -wal/-shm) aside, start a fresh store
    and record that in it. Returns (store, where the corrupt file went or None).

    Nothing is lost for good: readings in the corrupt file were signed but are no longer readable; the energy
    counters are cumulative, so the next reading carries the same Wh. The fresh store allocates seqs from 1
    again; the gateway acks its highest seq and the store resyncs past it (Store._resync, event seq_resync).
    Any other StoreError (unwritable directory, disk full, newer schema) propagates: moving the file would not
    fix it and would hide it."""
    try:
        return Store(path, max_readings=max_readings, overflow=overflow, wall_ms=wall_ms), None
    except StoreCorruptError as exc:
        problem = str(exc)
    aside = _move_aside(Path(path), wall_ms())
    log.error("%s; moved it to %s (kept for inspection) and started a fresh store: seqs resync from the "
              "gateway's ack", problem, aside)
    store = Store(path, max_readings=max_readings, overflow=overflow, wall_ms=wall_ms)
    store.record_event(STORE_REPLACED_EVENT, None, f"{problem}; moved to {aside}; fresh store, seqs resync from "
                       "the gateway's ack", counter="corrupt_store_replaced")
    return store, aside


def _move_aside(path: Path, now_ms: int) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now_ms / 1000))
    aside = path.with_name(f"{path.name}{CORRUPT_SUFFIX}{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}{CORRUPT_SUFFIX}{stamp}.{n}")
    for suffix in ("", "-wal", "-shm", "-journal"):  # the WAL belongs to the file it was written for
        src = path.with_name(path.name + suffix)
        if src.exists():
            try:
                os.replace(src, aside.with_name(aside.name + suffix))
            except OSError as exc:
                raise StoreError(f"{path}: the store file is corrupt and cannot be moved aside ({exc})") from exc
    _fsync_dir(path.parent)
    copies = sorted((p for p in path.parent.glob(f"{path.name}{CORRUPT_SUFFIX}*")
                     if not p.name.endswith(("-wal", "-shm", "-journal"))), key=lambda p: p.stat().st_mtime_ns)
    for old in copies[:-KEEP_CORRUPT_COPIES]:
        for suffix in ("", "-wal", "-shm", "-journal"):
            with contextlib.suppress(FileNotFoundError):
                old.with_name(old.name + suffix).unlink()
        log.warning("removed an older corrupt store copy %s (keeping the newest %d)", old, KEEP_CORRUPT_COPIES)
    return aside


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
