"""What a store error means outside gateway/store/ (gateway.store.errors): the intake retries a storage failure
and quarantines anything else; the CLI turns any database error into one line. Both backends' drivers."""

from __future__ import annotations

import sqlite3

import psycopg
import psycopg.errors
import pytest

from gateway.store.errors import database_error, retryable


@pytest.mark.parametrize(
    ("exc", "is_retryable", "is_database"),
    [
        (sqlite3.OperationalError("database is locked"), True, True),
        (sqlite3.OperationalError("database or disk is full"), True, True),
        (sqlite3.IntegrityError("UNIQUE constraint failed: readings.meter_id"), False, True),
        (sqlite3.DatabaseError("file is not a database"), False, True),
        (psycopg.OperationalError("connection to server at 127.0.0.1 failed"), True, True),
        (psycopg.errors.AdminShutdown("terminating connection due to administrator command"), True, True),
        (psycopg.errors.UniqueViolation("duplicate key value"), False, True),
        (ValueError("seq: must be in 1..2**63-1"), False, False),
        (OverflowError("Python int too large to convert to SQLite INTEGER"), False, False),
    ],
)
def test_store_errors_by_meaning(exc: BaseException, is_retryable: bool, is_database: bool) -> None:
    assert retryable(exc) is is_retryable
    assert database_error(exc) is is_database
