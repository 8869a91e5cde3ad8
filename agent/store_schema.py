"""The agent store's SQLite file: its layout, how it is opened, and its one kind of transaction.

Only agent.store uses this module. Choices (see agent.store for the durability order they serve): WAL with
synchronous=FULL, so a committed seq survives a power cut; busy_timeout so a concurrent reader (status,
tests, `reset-counter` while the agent runs) never makes a write fail at once; a schema version in
PRAGMA user_version, so an agent never writes a store laid out by a different version.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

# 5 s: longer than any of our own transactions (ms), short enough that a stuck reader surfaces as an error.
DEFAULT_BUSY_TIMEOUT_MS = 5000
# quick_check at open (O(pages), read-only; ~ms for a store of 10^4 readings) reports at most this many problems.
QUICK_CHECK_MAX_ERRORS = 5
SCHEMA_VERSION = 1
# Page size of a NEW store (an existing file keeps its own; WAL mode cannot change it). Every commit writes each
# page it touched once more to the WAL, and a household commit touches a handful of pages (the readings' tail,
# the (meter_id, seq) index, seqs, meter_state) holding a few kB of new data: with 4096-byte pages that is ~5x
# the data, with 1024-byte pages ~2x. Readings (~300 bytes with signature) still fit 3 to a page; a backlog drain
# reads a few more pages per batch, which costs nothing on the SD card.
NEW_STORE_PAGE_SIZE = 1024
SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id          INTEGER PRIMARY KEY,         -- global arrival order (drop_oldest)
    meter_id    TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    read_at_ms  INTEGER NOT NULL,
    payload     BLOB    NOT NULL,            -- the exact signed bytes
    signature   BLOB    NOT NULL,
    UNIQUE (meter_id, seq)
);
CREATE TABLE IF NOT EXISTS seqs (
    meter_id    TEXT PRIMARY KEY,
    next_seq    INTEGER NOT NULL,            -- next seq to allocate: never goes down
    acked_seq   INTEGER NOT NULL DEFAULT 0   -- highest seq a valid gateway ack covered
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, kind TEXT NOT NULL, meter_id TEXT, detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meter_state (      -- last GOOD counters, for the glitch filter across restarts
    meter_id TEXT PRIMARY KEY, import_wh INTEGER NOT NULL, export_wh INTEGER NOT NULL, read_at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counter_resets (   -- meter replaced: next reading starts a new baseline
    meter_id TEXT PRIMARY KEY, requested_at_ms INTEGER NOT NULL, reason TEXT NOT NULL
);
"""


class StoreError(Exception):
    """The store cannot be opened or written (disk full, corrupt file, permissions)."""


class StoreCorruptError(StoreError):
    """The store file is damaged (SQLITE_CORRUPT / SQLITE_NOTADB, or PRAGMA quick_check found a problem).
    Retrying cannot help: at start the file is moved aside (agent.store_recovery.open_or_replace)."""


# SQLite primary result codes that mean "this file is damaged", not "try again": SQLITE_CORRUPT, SQLITE_NOTADB.
_CORRUPT_CODES = {11, 26}
# Values SQLite cannot hold (INTEGER is signed 64-bit) raise OverflowError from the sqlite3 module.
STORE_FAILURES: tuple[type[BaseException], ...] = (sqlite3.Error, OverflowError)


def is_corrupt(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, StoreCorruptError) or (isinstance(code, int) and code & 0xFF in _CORRUPT_CODES)


def store_error(message: str, exc: BaseException) -> StoreError:
    """One error type for every store failure; a damaged file says so plainly."""
    if isinstance(exc, StoreError) and not is_corrupt(exc):
        return StoreError(f"{message} ({exc})")
    if is_corrupt(exc):
        return StoreCorruptError(f"{message}: the store file is corrupt ({exc})")
    if isinstance(exc, OverflowError):
        return StoreError(f"{message}: a value beyond what SQLite INTEGER holds (signed 64-bit) ({exc})")
    return StoreError(f"{message} ({exc})")


def open_store_db(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) the store at path: WAL, FULL sync, busy timeout, schema, version checked.
    Every failure, including an unwritable state directory, is a StoreError naming the path."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"{path}: cannot open store ({exc})") from exc
    try:
        db.execute(f"PRAGMA busy_timeout = {DEFAULT_BUSY_TIMEOUT_MS}")
        db.execute(f"PRAGMA page_size = {NEW_STORE_PAGE_SIZE}")  # only takes effect on a new, empty file
        mode = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"{path}: cannot switch SQLite to WAL (journal_mode={mode})")
        db.execute("PRAGMA synchronous = FULL")
        db.executescript(SCHEMA)
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise StoreError(f"{path}: store schema version {version}, this agent speaks {SCHEMA_VERSION}")
        problems = [r[0] for r in db.execute(f"PRAGMA quick_check({QUICK_CHECK_MAX_ERRORS})")]
        if problems != ["ok"]:
            raise StoreCorruptError(f"{path}: the store file is corrupt (quick_check: {'; '.join(problems)})")
    except sqlite3.Error as exc:
        db.close()
        raise store_error(f"{path}: cannot open store", exc) from exc
    except StoreError:
        db.close()
        raise
    return db


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception (autocommit connection)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:  # locked beyond busy_timeout, disk I/O error, closed
            raise store_error("cannot start a store transaction", exc) from exc

    def __exit__(self, exc_type: object, exc: BaseException | None, _tb: object) -> None:
        try:
            self._db.execute("ROLLBACK" if exc_type else "COMMIT")
        except sqlite3.Error as end_exc:
            raise store_error(f"cannot {'roll back' if exc_type else 'commit'} a store transaction", end_exc
                              ) from end_exc
        if isinstance(exc, STORE_FAILURES):  # callers see one error type for every store failure
            raise store_error("store write failed", exc) from exc
