"""The gridmeter gateway: verifies, checks and durably queues signed readings, then submits interval
readings to the GridTokenX oracle. See gateway/README.md.

Modules (imported directly; nothing is re-exported so `import gateway` stays free of solana/paho):
config, keys, registry, checks (pure), intervals (pure), store, acceptance, intake (MQTT), ingest_http,
submitter, oracle_layout (pure), oracle (RPC), fleet, web, metrics, service, cli.
"""

__all__: list[str] = []
