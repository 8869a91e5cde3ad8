"""MQTT topic layout (version 1). One place builds and parses every topic.

    gridmeter/v1/{meter_id}/readings   agent -> gateway, QoS 1, batch messages (protocol.canonical)
    gridmeter/v1/{meter_id}/ack        gateway -> agent, QoS 1, signed ack (highest contiguous seq)
    gridmeter/v1/{meter_id}/status     agent, retained JSON {"state": "online"|"offline", ...}
    gridmeter/v1/agent/{agent_id}/status  agent process, retained JSON; its LWT = offline (one connection
                                       carries several meters, and MQTT allows one will per connection)

meter_id never equals "agent" in a 4-level topic: the meter filters (+/readings) match 3 levels only.
"""

from __future__ import annotations

import re

from protocol.errors import InvalidFieldError
from protocol.reading import validate_meter_id

PREFIX = "gridmeter/v1"
READINGS_FILTER = f"{PREFIX}/+/readings"
STATUS_FILTER = f"{PREFIX}/+/status"
AGENT_STATUS_FILTER = f"{PREFIX}/agent/+/status"
_AGENT_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


_PREFIX_LEVEL_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def prefix_problem(prefix: str) -> str | None:
    """Why `prefix` cannot be a topic prefix, or None. Plain levels only: a wildcard, space or newline in it
    would widen the broker ACL lines provisioning writes from it."""
    levels = prefix.split("/")
    if not 1 <= len(levels) <= 8 or not all(_PREFIX_LEVEL_RE.match(level) for level in levels):
        return "must be 1-8 '/'-separated levels of A-Z a-z 0-9 . _ - (no wildcards, spaces or empty levels)"
    return None


def client_id_problem(client_id: str) -> str | None:
    """Why `client_id` cannot name an agent/gateway process (it becomes a topic level), or None."""
    return None if _AGENT_ID_RE.match(client_id) else "must be 1-64 of A-Z a-z 0-9 . _ -"


def readings_topic(meter_id: str, prefix: str = PREFIX) -> str:
    return f"{prefix}/{validate_meter_id(meter_id)}/readings"


def ack_topic(meter_id: str, prefix: str = PREFIX) -> str:
    return f"{prefix}/{validate_meter_id(meter_id)}/ack"


def status_topic(meter_id: str, prefix: str = PREFIX) -> str:
    return f"{prefix}/{validate_meter_id(meter_id)}/status"


def agent_status_topic(agent_id: str, prefix: str = PREFIX) -> str:
    """Status of one agent process (its MQTT client id); carries the LWT."""
    if not _AGENT_ID_RE.match(agent_id):
        raise InvalidFieldError(f"agent id (MQTT client id): 1-64 of A-Z a-z 0-9 . _ - (got {agent_id!r})")
    return f"{prefix}/agent/{agent_id}/status"


def shared_readings_filter(group: str, prefix: str = PREFIX) -> str:
    """MQTT v5 shared subscription so several gateway processes split the load."""
    return f"$share/{group}/{prefix}/+/readings"


def parse_meter_topic(topic: str, kind: str, prefix: str = PREFIX) -> str:
    """Return the meter_id of `{prefix}/{meter_id}/{kind}`; raises InvalidFieldError otherwise."""
    head = prefix + "/"
    tail = "/" + kind
    if not (topic.startswith(head) and topic.endswith(tail)):
        raise InvalidFieldError(f"topic {topic!r} is not {prefix}/<meter_id>/{kind}")
    return validate_meter_id(topic[len(head) : -len(tail)])
