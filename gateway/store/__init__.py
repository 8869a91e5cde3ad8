"""The gateway's durable state, and the only place in the gateway that speaks SQL.

- api.py: the interface both backends implement (GatewayStore).
- sqlite.py: the embedded default for one box (WAL, synchronous=FULL); postgres.py: the fleet backend.
- database.py: SQLite connections and transactions; migrations.py: versioned schemas for both backends.
- outbox.py: submission rows, their states and keys; retention.py: what is pruned when.
- fleet.py: the read-only views staff and the dashboard use.
"""
