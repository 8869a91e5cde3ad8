"""Choosing the store backend: SQLite by default, PostgreSQL with gateway.postgres_dsn."""

from __future__ import annotations

from gateway.config import parse_config
from gateway.store.postgres import _meter_lock_key

DSN = "postgresql://gridmeter@db1,db2/gridmeter?target_session_attrs=read-write"
TOKEN = "k3J9-vQ2x-Lp7w-Zr4m-Ty8n-Hb6c"


def test_postgres_runs_every_part() -> None:
    """The dashboard reads the store's views (gateway/store/fleet.py) on either backend; the HTTP ingest writes
    to either."""
    cfg = parse_config({"gateway": {"postgres_dsn": DSN}, "dashboard": {"token": TOKEN}})
    assert cfg.dashboard.enabled and cfg.gateway.postgres_dsn == DSN
    cfg = parse_config({"gateway": {"postgres_dsn": DSN}, "dashboard": {"enabled": False},  # HTTP ingest: allowed
                        "http": {"enabled": True, "api_keys": [TOKEN]}})
    assert cfg.http.enabled and cfg.gateway.postgres_dsn == DSN
    assert parse_config({"dashboard": {"token": TOKEN}}).gateway.postgres_dsn == ""  # default: SQLite


def test_meter_lock_keys_are_stable_signed_64_bit() -> None:
    """Every host must derive the same advisory lock key for a meter (not Python's salted hash())."""
    assert _meter_lock_key("HOUSE-1") == -5828670184072353624  # blake2b-64 of the id: the same on every host
    keys = {_meter_lock_key(f"M-{i}") for i in range(10_000)}
    assert len(keys) == 10_000
    assert all(-(2**63) <= k < 2**63 for k in keys)
