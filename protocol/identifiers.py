"""Identifiers: one validator per kind, each a whole-string match (re.fullmatch).

Every identifier here ends up in a place where one stray byte does damage: an MQTT topic level (a '+', '#' or
'/' widens a subscription or an ACL line), a mosquitto password/ACL file (a newline starts a new directive, and
mosquitto refuses to start on a line it does not understand), a file name, an on-chain PDA seed (32 bytes).
So each kind is a plain ASCII set checked over the WHOLE string: `re.match(r"^...$")` is not enough, because
`$` also matches before a trailing newline ("HOUSE-2\\n" would pass).

Kinds:
    meter_id       1-32 of A-Z a-z 0-9 . _ -   (topic level, PDA seed, file name)
    device_id      an HTTP ingest device id; it names a registered meter, so it is a meter_id
    client_id      1-64 of A-Z a-z 0-9 . _ -   (MQTT client id of an agent/gateway; a topic level of its status)
    mqtt_username  1-64 of A-Z a-z 0-9 . _ -   (mosquitto password/ACL files; the agent's client id)
    topic_prefix   1-8 '/'-separated levels, each 1-64 of A-Z a-z 0-9 . _ -

Each kind has `<kind>_problem(value) -> str | None` (why it is not one, for config/CLI messages) and
`validate_<kind>(value) -> str` (raises InvalidFieldError naming the kind and the bad value).
"""

from __future__ import annotations

import re

from protocol.errors import InvalidFieldError

MAX_METER_ID_BYTES = 32  # becomes an on-chain PDA seed: Solana caps a seed at 32 bytes
MAX_CLIENT_ID_CHARS = 64
MAX_USERNAME_CHARS = 64
MAX_PREFIX_LEVELS = 8
MAX_PREFIX_LEVEL_CHARS = 64

# Explicit ASCII classes (never \w or \d: those match Cyrillic letters and Arabic digits in str patterns).
METER_ID_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_METER_ID_BYTES}}}")
CLIENT_ID_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_CLIENT_ID_CHARS}}}")
USERNAME_RE = re.compile(rf"[A-Za-z0-9._-]{{1,{MAX_USERNAME_CHARS}}}")
_LEVEL = rf"[A-Za-z0-9._-]{{1,{MAX_PREFIX_LEVEL_CHARS}}}"
TOPIC_PREFIX_RE = re.compile(rf"{_LEVEL}(?:/{_LEVEL}){{0,{MAX_PREFIX_LEVELS - 1}}}")

_CHARS = "A-Z a-z 0-9 . _ -"
METER_ID_RULE = f"1-{MAX_METER_ID_BYTES} characters of {_CHARS}"
CLIENT_ID_RULE = f"1-{MAX_CLIENT_ID_CHARS} characters of {_CHARS}"
USERNAME_RULE = f"1-{MAX_USERNAME_CHARS} characters of {_CHARS}"
TOPIC_PREFIX_RULE = (f"1-{MAX_PREFIX_LEVELS} '/'-separated levels of {_CHARS} "
                     "(no wildcards, spaces, newlines or empty levels)")


def _fits(pattern: re.Pattern[str], value: object) -> bool:
    return isinstance(value, str) and pattern.fullmatch(value) is not None


def _problem(pattern: re.Pattern[str], rule: str, value: object) -> str | None:
    return None if _fits(pattern, value) else f"must be {rule}"


def _validate(kind: str, pattern: re.Pattern[str], rule: str, value: object) -> str:
    if not _fits(pattern, value):
        raise InvalidFieldError(f"{kind}: {rule} (got {value!r})")
    return value  # type: ignore[return-value]  # _fits checked it is a str


def meter_id_problem(value: object) -> str | None:
    return _problem(METER_ID_RE, METER_ID_RULE, value)


def validate_meter_id(value: object) -> str:
    return _validate("meter_id", METER_ID_RE, METER_ID_RULE, value)


def device_id_problem(value: object) -> str | None:
    return meter_id_problem(value)


def validate_device_id(value: object) -> str:
    """An HTTP ingest device id names a registered meter: the meter_id rule, named as device_id."""
    return _validate("device_id", METER_ID_RE, METER_ID_RULE, value)


def client_id_problem(value: object) -> str | None:
    return _problem(CLIENT_ID_RE, CLIENT_ID_RULE, value)


def validate_client_id(value: object) -> str:
    return _validate("client_id", CLIENT_ID_RE, CLIENT_ID_RULE, value)


def mqtt_username_problem(value: object) -> str | None:
    return _problem(USERNAME_RE, USERNAME_RULE, value)


def validate_mqtt_username(value: object) -> str:
    return _validate("mqtt_username", USERNAME_RE, USERNAME_RULE, value)


def topic_prefix_problem(value: object) -> str | None:
    return _problem(TOPIC_PREFIX_RE, TOPIC_PREFIX_RULE, value)


def validate_topic_prefix(value: object) -> str:
    return _validate("topic_prefix", TOPIC_PREFIX_RE, TOPIC_PREFIX_RULE, value)
