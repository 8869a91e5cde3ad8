"""Where readings enter the gateway, in data-flow order:

mqtt          the MQTT entry: shared subscription, bounded receive queue, one signed ack per meter (paho)
acceptance    decode -> envelope checks -> signatures (worker processes) -> progress checks -> one store commit
checks        the rules, pure: every verdict and its stable reason code, used by both entries
http          the GridTokenX-compatible HTTP entry (POST /v1/private-network/ingest) and its status endpoints
http_payload  that entry's JSON body and signed message, pure

A rule lives once, in checks (the rated-power rule itself in base.plausibility, shared with the agent): the
HTTP entry calls checks.read_at_window and checks.implausible_energy like the MQTT path does.
"""
