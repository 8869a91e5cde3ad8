"""MQTT topic layout (version 1). One place builds and parses every topic.

    gridmeter/v1/{meter_id}/readings   agent -> gateway, QoS 1, batch messages (protocol.canonical)
    gridmeter/v1/{meter_id}/ack        gateway -> agent, QoS 1, signed ack (highest contiguous seq)
    gridmeter/v1/{meter_id}/status     agent, retained JSON {"state": "online"|"offline", ...}; LWT = offline
"""

from __future__ import annotations

from protocol.errors import InvalidFieldError
from protocol.reading import validate_meter_id

PREFIX = "gridmeter/v1"
READINGS_FILTER = f"{PREFIX}/+/readings"
STATUS_FILTER = f"{PREFIX}/+/status"


def readings_topic(meter_id: str, prefix: str = PREFIX) -> str:
    return f"{prefix}/{validate_meter_id(meter_id)}/readings"


def ack_topic(meter_id: str, prefix: str = PREFIX) -> str:
    return f"{prefix}/{validate_meter_id(meter_id)}/ack"


def status_topic(meter_id: str, prefix: str = PREFIX) -> str:
    return f"{prefix}/{validate_meter_id(meter_id)}/status"


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
