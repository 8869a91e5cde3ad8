"""MQTT topic layout (version 1). One place builds and parses every topic.

    gridmeter/v1/{meter_id}/readings   agent -> gateway, QoS 1, batch messages (protocol.canonical)
    gridmeter/v1/{meter_id}/ack        gateway -> agent, QoS 1, signed ack (highest contiguous seq)
    gridmeter/v1/{meter_id}/status     agent, retained JSON {"state": "online"|"offline", ...}
    gridmeter/v1/agent/{agent_id}/status  agent process, retained JSON; its LWT = offline (one connection
                                       carries several meters, and MQTT allows one will per connection)

meter_id never equals "agent" in a 4-level topic: the meter filters (+/readings) match 3 levels only.
"""

from __future__ import annotations

from protocol.errors import InvalidFieldError
from protocol.identifiers import (
    CLIENT_ID_RULE,
    client_id_problem,
    topic_prefix_problem,
    validate_client_id,
    validate_meter_id,
    validate_topic_prefix,
)

PREFIX = "gridmeter/v1"
READINGS_FILTER = f"{PREFIX}/+/readings"
STATUS_FILTER = f"{PREFIX}/+/status"
AGENT_STATUS_FILTER = f"{PREFIX}/agent/+/status"


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot be a topic prefix, or None. Plain levels only: a wildcard, space or newline in it
    would widen the broker ACL lines provisioning writes from it."""
    return topic_prefix_problem(prefix)


def readings_topic(meter_id: str, prefix: str = PREFIX) -> str:
    return f"{_prefix(prefix)}/{validate_meter_id(meter_id)}/readings"


def ack_topic(meter_id: str, prefix: str = PREFIX) -> str:
    return f"{_prefix(prefix)}/{validate_meter_id(meter_id)}/ack"


def status_topic(meter_id: str, prefix: str = PREFIX) -> str:
    return f"{_prefix(prefix)}/{validate_meter_id(meter_id)}/status"


def agent_status_topic(agent_id: str, prefix: str = PREFIX) -> str:
    """Status of one agent process (its MQTT client id); carries the LWT."""
    if client_id_problem(agent_id):
        raise InvalidFieldError(f"agent id (MQTT client id): {CLIENT_ID_RULE} (got {agent_id!r})")
    return f"{_prefix(prefix)}/agent/{agent_id}/status"


def shared_readings_filter(group: str, prefix: str = PREFIX) -> str:
    """MQTT v5 shared subscription so several gateway processes split the load."""
    return f"$share/{validate_client_id(group)}/{_prefix(prefix)}/+/readings"


def parse_meter_topic(topic: str, kind: str, prefix: str = PREFIX) -> str:
    """Return the meter_id of `{prefix}/{meter_id}/{kind}`; raises InvalidFieldError otherwise."""
    head = prefix + "/"
    tail = "/" + kind
    if not (topic.startswith(head) and topic.endswith(tail)):
        raise InvalidFieldError(f"topic {topic!r} is not {prefix}/<meter_id>/{kind}")
    return validate_meter_id(topic[len(head) : -len(tail)])


def _prefix(prefix: str) -> str:
    return prefix if prefix == PREFIX else validate_topic_prefix(prefix)
