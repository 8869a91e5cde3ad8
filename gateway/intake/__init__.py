"""Where readings enter the gateway, in data-flow order:

mqtt          the MQTT entry: shared subscription, bounded receive queue, one signed ack per meter (paho)
acceptance    decode -> envelope checks -> signatures -> progress checks -> one store commit, per group
  budgets     what a publisher may cost: the per-meter ingress bucket, the quarantine budget
  signatures  Ed25519 checks in worker processes (inline for a small group or a broken pool)
  group       one group's items and the rows its transaction writes
checks        the rules, pure: every verdict and its stable reason code, used by both entries
http          the GridTokenX-compatible HTTP entry (POST /v1/private-network/ingest) and its status endpoints
http_payload  that entry's JSON body and signed message, pure

A rule lives once, in checks (the rated-power rule itself in base.plausibility, shared with the agent): the
HTTP entry calls checks.read_at_window and checks.implausible_energy like the MQTT path does.
"""
