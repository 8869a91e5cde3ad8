"""What a store error means outside gateway/store/ (gateway.store.errors): the intake retries a storage failure
and quarantines anything else; the CLI turns any database error into one line. Both backends' drivers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

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


@pytest.mark.parametrize("argv", [["rejections"], ["held"], ["outbox"], ["ingest-status", "M1"]])
def test_cli_database_problem_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 argv: list[str]) -> None:
    """A gateway database that is not one (a damaged file) is a database error of the store: one line, exit 2."""
    from gridmeter.cli import main

    (tmp_path / "gateway.sqlite").write_bytes(b"not a database, just bytes " * 200)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n')
    assert main(["gateway", *argv, "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gridmeter gateway: database problem in the state directory (file is not a database)")
    assert "Traceback" not in err
