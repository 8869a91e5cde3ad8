"""What a store error means to its caller, whichever backend raised it: code outside gateway/store/ asks these
predicates and never names a database driver (tests/unit/test_layout.py).

- `retryable`: the storage, not the data, failed: a locked or busy database, disk full, read-only, a failing
  disk, a lost or refused server connection (sqlite3.OperationalError, psycopg.OperationalError). The same
  work succeeds later unchanged: the intake waits and tries the same messages again, acking nothing meanwhile.
- `database_error`: any error of the database (the above, a corrupt file, a schema or constraint problem): a
  CLI command reports it in one line instead of a traceback.
"""

from __future__ import annotations

import sqlite3
import sys


def _psycopg_errors() -> tuple[type[BaseException], type[BaseException]] | None:
    """(psycopg.Error, psycopg.OperationalError) if psycopg is loaded. A psycopg error cannot exist before the
    PostgreSQL store imported psycopg, so a SQLite gateway never pays for importing it here."""
    pg = sys.modules.get("psycopg")
    return None if pg is None else (pg.Error, pg.OperationalError)


def retryable(exc: BaseException) -> bool:
    """A transient failure of the storage (see the module docstring): wait and try the same work again."""
    pg = _psycopg_errors()
    return isinstance(exc, sqlite3.OperationalError) or (pg is not None and isinstance(exc, pg[1]))


def database_error(exc: BaseException) -> bool:
    """Any error raised by the database of either backend."""
    pg = _psycopg_errors()
    return isinstance(exc, sqlite3.Error) or (pg is not None and isinstance(exc, pg[0]))
