"""The GridTokenX HTTP ingest's tables in the SQLite store, and the SQL of its write path that both backends
run (gateway.store.sqlite.Store.add_http_reading; PostgreSQL's tables: gateway.store.migrations)."""

# GridTokenX HTTP ingest (the older table http_readings holds rows of gateway versions that sent each
# reading on its own; they still count for duplicate and order checks). Energies in integer mWh as received,
# with the per-meter running sums the interval planner reads (records.http_point); http_plan_state is that
# planner's state, as plan_state is for MQTT meters; http_meters, one row per meter, is what the submitter
# scans every cycle (http_ingest grows by a row per reading and is only read by index).
HTTP_SCHEMA = """
CREATE TABLE IF NOT EXISTS http_ingest (
    meter_id TEXT NOT NULL, seq INTEGER NOT NULL, reading_id TEXT NOT NULL UNIQUE, timestamp_ms INTEGER NOT NULL,
    import_mwh INTEGER NOT NULL, export_mwh INTEGER NOT NULL, cum_import_mwh INTEGER NOT NULL,
    cum_export_mwh INTEGER NOT NULL, body BLOB NOT NULL, received_at_ms INTEGER NOT NULL,
    PRIMARY KEY (meter_id, seq), UNIQUE (meter_id, timestamp_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS http_meters (
    meter_id TEXT PRIMARY KEY, last_seq INTEGER NOT NULL, last_received_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS http_plan_state (
    meter_id TEXT PRIMARY KEY, baseline_set INTEGER NOT NULL, last_seq INTEGER NOT NULL,
    anchor_read_at_ms INTEGER NOT NULL, sub_import_wh INTEGER NOT NULL, sub_export_wh INTEGER NOT NULL,
    last_import_wh INTEGER NOT NULL, last_export_wh INTEGER NOT NULL, last_read_at_ms INTEGER NOT NULL,
    last_ts INTEGER
);
"""
# What add_http_reading decides on, in one query (one round trip to a PostgreSQL server): the reading_id already
# stored at this timestamp, a row of the older http_readings table at it, whether MQTT readings of the meter were
# accepted, that table's last timestamp, and the meter's newest http_ingest row (seq, running sums, timestamp:
# timestamps increase with seq).
HTTP_BOOKS = """
SELECT d.reading_id, (SELECT COUNT(*) FROM http_readings WHERE meter_id = ? AND timestamp_ms = ?),
       (SELECT COUNT(*) FROM progress WHERE meter_id = ? AND last_read_at_ms IS NOT NULL),
       (SELECT MAX(timestamp_ms) FROM http_readings WHERE meter_id = ?),
       n.seq, n.cum_import_mwh, n.cum_export_mwh, n.timestamp_ms
FROM (SELECT 1 AS one) AS o
LEFT JOIN (SELECT seq, cum_import_mwh, cum_export_mwh, timestamp_ms FROM http_ingest WHERE meter_id = ?
           ORDER BY seq DESC LIMIT 1) AS n ON TRUE
LEFT JOIN http_ingest d ON d.meter_id = ? AND d.timestamp_ms = ?
"""
HTTP_METERS_UPSERT = ("INSERT INTO http_meters VALUES (?,?,?) ON CONFLICT (meter_id) DO UPDATE SET "
                      "last_seq = excluded.last_seq, last_received_ms = excluded.last_received_ms")
