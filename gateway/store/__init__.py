"""The gateway's durable state, and the only place in the gateway that speaks SQL (tests/unit/test_layout.py:
nothing else imports a database driver or runs a statement; this package imports none of the rooms above it).

- api.py: the interface both backends implement (GatewayStore), and open_store(cfg), the backend a config names.
- sqlite.py: the embedded default for one box (WAL, synchronous=FULL); postgres.py: the fleet backend;
  registry.py: the meter registry's SQLite tables (one box); postgres_registry.py: a fleet's one meter registry.
- database.py: SQLite connections and transactions; migrations.py: versioned schemas for both backends.
- records.py: the plain records it persists (Progress, Point, PlanState, Planned, MeterPlan).
- outbox.py: submission rows, their states and keys; planning.py: the planner's SQL; http_tables.py: the
  GridTokenX HTTP ingest's tables; retention.py: what is pruned when.
- fleet.py: the read-only views of the dashboard, the CLI and the HTTP status endpoints (both backends).
- errors.py: what a store error means to its caller (retryable, database_error), whichever driver raised it.
- notices.py: PostgreSQL LISTEN/NOTIFY: stored readings wake the active submitter on any gateway.
"""
