"""protocol.identifiers: one validator per identifier kind, whole-string match, used by every entry point.

Table test of hostile values against each validator and against the entry points that take an identifier from
outside: the provisioning CLI, the agent config, the gateway registry (`gateway meters add`), the reading decoder
and the topic builders. (HTTP ingest device_id: tests/integration/test_identifiers_http.py, a real server.)
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError, parse_config
from gateway.registry import MeterStatus, RegistryError
from gateway.store.registry import Registry
from gridmeter.cli import main
from protocol import InvalidFieldError, ProtocolError, SigningKey, decode_batch, decode_reading, encode_reading
from protocol.canonical import BATCH_MAGIC
from protocol.identifiers import (
    client_id_problem,
    device_id_problem,
    meter_id_problem,
    mqtt_username_problem,
    topic_prefix_problem,
    validate_client_id,
    validate_device_id,
    validate_meter_id,
    validate_mqtt_username,
    validate_topic_prefix,
)
from protocol.reading import Instantaneous, Quality, Reading
from protocol.registration import TEXT_PREFIX, MeterRole, Registration, _body
from protocol.topics import ack_topic, agent_status_topic, readings_topic, shared_readings_filter, status_topic

# Values no identifier kind may take. Each is "almost" a good id, the way a careless paste or an attacker makes one.
HOSTILE = [
    pytest.param("HOUSE-2\n", id="trailing-newline"),
    pytest.param("HOUSE-2\r\n", id="trailing-crlf"),
    pytest.param("HOU\nSE-2", id="embedded-newline"),
    pytest.param("\nHOUSE-2", id="leading-newline"),
    pytest.param("HOUSE-2\x00", id="trailing-nul"),
    pytest.param("HOU\x00SE", id="embedded-nul"),
    pytest.param("HOUSE+2", id="plus"),
    pytest.param("HOUSE#2", id="hash"),
    pytest.param("HOUSE/2", id="slash"),
    pytest.param("HOUSE 2", id="space"),
    pytest.param(" HOUSE-2", id="leading-space"),
    pytest.param("HOUSE-2 ", id="trailing-space"),
    pytest.param("HOUSE\t2", id="tab"),
    pytest.param("\u0410BC-1", id="cyrillic-A"),  # looks like "ABC-1"
    pytest.param("H\u041eUSE-2", id="cyrillic-O"),
    pytest.param("\uff28OUSE", id="fullwidth-H"),
    pytest.param("METER-\u0661", id="arabic-indic-digit"),  # \d would match it
    pytest.param("HOUSE\u200b2", id="zero-width-space"),
    pytest.param("x" * 65, id="over-long-65"),
    pytest.param("x" * 1000, id="over-long-1000"),
    pytest.param("", id="empty"),
]
# Long enough for client ids / usernames (64) but not for a meter id (32: an on-chain PDA seed).
METER_TOO_LONG = "M" * 33

VALIDATORS = [
    (meter_id_problem, validate_meter_id, "meter_id"),
    (device_id_problem, validate_device_id, "device_id"),
    (client_id_problem, validate_client_id, "client_id"),
    (mqtt_username_problem, validate_mqtt_username, "mqtt_username"),
    (topic_prefix_problem, validate_topic_prefix, "topic_prefix"),
]


@pytest.mark.parametrize("value", HOSTILE)
@pytest.mark.parametrize(("problem", "validate", "kind"), VALIDATORS, ids=[v[2] for v in VALIDATORS])
def test_every_kind_refuses_hostile_values(problem: Any, validate: Any, kind: str, value: str) -> None:
    if kind == "topic_prefix" and value == "HOUSE/2":
        assert validate(value) == value  # '/' separates a prefix's levels: the one place it belongs
        return
    assert problem(value) is not None
    with pytest.raises(InvalidFieldError) as e:
        validate(value)
    assert str(e.value).startswith(f"{kind}: ") and repr(value) in str(e.value)


@pytest.mark.parametrize(("problem", "validate", "kind"), VALIDATORS, ids=[v[2] for v in VALIDATORS])
@pytest.mark.parametrize("value", [None, 7, b"HOUSE-1", ["HOUSE-1"]])
def test_non_strings_refused(problem: Any, validate: Any, kind: str, value: object) -> None:
    assert problem(value) is not None
    with pytest.raises(InvalidFieldError):
        validate(value)


@pytest.mark.parametrize(("validate", "value"), [
    (validate_meter_id, "HOUSE-1"), (validate_meter_id, "M" * 32), (validate_meter_id, "pv_2.a-b"),
    (validate_device_id, "METER-001"), (validate_client_id, "gridmeter-agent-pi4"), (validate_client_id, "c" * 64),
    (validate_mqtt_username, "gm-HOUSE-1"), (validate_mqtt_username, "u" * 64),
    (validate_topic_prefix, "gridmeter/v1"), (validate_topic_prefix, "site-7/gridmeter/v1"),
    (validate_topic_prefix, "/".join(["a"] * 8)),
])
def test_good_values_pass_unchanged(validate: Any, value: str) -> None:
    assert validate(value) == value


@pytest.mark.parametrize("value", [METER_TOO_LONG])
def test_meter_id_is_at_most_32(value: str) -> None:
    assert meter_id_problem(value) and device_id_problem(value)
    assert client_id_problem(value) is None  # 33 is fine for the 64-character kinds


@pytest.mark.parametrize("value", ["gridmeter//v1", "/gridmeter/v1", "gridmeter/v1/", "gridmeter/+", "gridmeter/#",
                                   "/".join(["a"] * 9), "gridmeter/v1\n", "gridmeter/\u0430"])
def test_topic_prefix_refuses_bad_levels(value: str) -> None:
    assert topic_prefix_problem(value) is not None


# ---- entry points ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [*HOSTILE, pytest.param(METER_TOO_LONG, id="meter-33")])
def test_topics_refuse_hostile_meter_ids(value: str) -> None:
    for build in (readings_topic, ack_topic, status_topic):
        with pytest.raises(InvalidFieldError):
            build(value)


@pytest.mark.parametrize("value", HOSTILE)
def test_topics_refuse_hostile_prefix_agent_id_and_share_group(value: str) -> None:
    if value != "HOUSE/2":  # a two-level prefix
        with pytest.raises(InvalidFieldError):
            readings_topic("HOUSE-1", prefix=value)
    with pytest.raises(InvalidFieldError):
        agent_status_topic(value)
    with pytest.raises(InvalidFieldError):
        shared_readings_filter(value)


def _unchecked_reading(meter_id: str) -> Reading:
    """A Reading built around the validation, as a hostile sender's encoder would."""
    r = object.__new__(Reading)
    values = {"meter_id": meter_id, "key_id": b"k" * 8, "seq": 1, "read_at_ms": 1_700_000_000_000,
              "clock_synced": True, "energy_import_wh": 1, "energy_export_wh": 0, "profile_id": "p",
              "quality": Quality.NONE, "instant": Instantaneous()}
    for k, v in values.items():
        object.__setattr__(r, k, v)
    return r


@pytest.mark.parametrize("value", [v for v in HOSTILE if len(v.values[0].encode()) <= 32])
def test_decoder_refuses_hostile_meter_id_on_the_wire(value: str) -> None:
    payload = encode_reading(_unchecked_reading(value))
    with pytest.raises(ProtocolError) as e:
        decode_reading(payload)
    assert e.value.reason in ("invalid_field", "malformed")
    batch = BATCH_MAGIC + (1).to_bytes(2, "little") + len(payload).to_bytes(2, "little") + payload + b"s" * 64
    item = decode_batch(batch)[0]
    assert item.signed is None and item.error is not None  # refused per reading, the batch goes on


@pytest.mark.parametrize("value", [*HOSTILE, pytest.param(METER_TOO_LONG, id="meter-33")])
def test_provision_mqtt_credentials_refuses_and_writes_nothing(value: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Reproduction: --meter-id $'HOUSE-2\\n' wrote password/ACL files with a line break after the username (mosquitto
    refuses to start on them) and exited 0."""
    out = tmp_path / "out"
    out.mkdir()
    rc = main(["provision", "mqtt-credentials", "--meter-id", value, "--out-dir", str(out)])
    err = capsys.readouterr().err
    assert rc != 0
    assert "--meter-id" in err and "1-32 characters" in err
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("value", [v for v in HOSTILE if v.values[0]])  # --username "" means the default
def test_provision_mqtt_credentials_refuses_hostile_username(value: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["provision", "mqtt-credentials", "--meter-id", "HOUSE-1", "--username", value,
               "--out-dir", str(tmp_path)])
    assert rc != 0 and "--username" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def _agent_doc() -> dict[str, Any]:
    return {
        "agent": {"state_dir": "state", "key_file": "device.key"},
        "clock": {"check": "always-synced"},
        "mqtt": {"host": "127.0.0.1", "gateway_public_key": "11" * 32, "client_id": "gm-HOUSE-1"},
        "buses": [{"name": "rs485-0", "kind": "rtu", "port": "/dev/ttyAMA0", "baudrate": 9600}],
        "meters": [{"meter_id": "HOUSE-1", "bus": "rs485-0", "unit_id": 1, "profile": "eastron-sdm630"}],
    }


_CONFIG_CASES = [
    pytest.param(where, *v.values, id=f"{where}-{v.id}")
    for where in ("meters.meter_id", "mqtt.client_id", "mqtt.username", "mqtt.topic_prefix", "buses.name")
    for v in HOSTILE
    # empty client_id/username mean "not set" (default client id / anonymous); "HOUSE/2" is a two-level prefix
    if not (v.values[0] == "" and where in ("mqtt.client_id", "mqtt.username"))
    and not (v.values[0] == "HOUSE/2" and where == "mqtt.topic_prefix")
]


@pytest.mark.parametrize(("where", "value"), _CONFIG_CASES)
def test_agent_config_refuses_hostile_identifiers(where: str, value: str) -> None:
    doc = _agent_doc()
    section, key = where.split(".")
    target = doc[section][0] if isinstance(doc[section], list) else doc[section]
    target[key] = value
    if where == "buses.name":
        doc["meters"][0]["bus"] = value
    with pytest.raises(ConfigError) as e:
        parse_config(doc, path=Path("/etc/gridmeter/agent.toml"), env={})
    assert key in str(e.value)


def test_agent_config_username_from_environment_is_checked() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config(_agent_doc(), path=Path("/etc/gridmeter/agent.toml"), env={"GRIDMETER_MQTT_USERNAME": "gm-1\n"})
    assert "username" in str(e.value)


def _hostile_record(meter_id: str, key: SigningKey) -> str:
    """A registration record signed by its own key but carrying `meter_id` (built around the validation)."""
    reg = object.__new__(Registration)
    values = {"meter_id": meter_id, "public_key": key.public_key, "profile": "eastron-sdm630",
              "serial_number": "SN-1", "role": MeterRole.GRID, "zone_id": 1, "rated_max_power_w": 10_000,
              "installer_id": "installer-7", "created_at_ms": 1_700_000_000_000, "previous_public_key": None}
    for k, v in values.items():
        object.__setattr__(reg, k, v)
    body = _body(reg)
    return TEXT_PREFIX + base64.urlsafe_b64encode(body + key.sign(body)).decode().rstrip("=")


@pytest.mark.parametrize("value", [v for v in HOSTILE if 0 < len(v.values[0].encode()) <= 32])
def test_registry_refuses_hostile_meter_id(value: str, tmp_path: Path) -> None:
    """Reproduction: `gateway meters add` registered "HOUSE-8\\n"."""
    reg = Registry(tmp_path / "registry.sqlite")
    try:
        with pytest.raises(RegistryError) as e:
            reg.add(_hostile_record(value, SigningKey.generate()), 0)
        assert e.value.reason == "invalid_field" and "meter_id" in str(e.value)
        assert reg.all() == []
        with pytest.raises(RegistryError) as e:
            reg.set_status(value, MeterStatus.SUSPENDED, 0)
        assert e.value.reason == "invalid_field"
    finally:
        reg.close()


def test_gateway_meters_add_cli_refuses_trailing_newline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n[dashboard]\nenabled = false\n')
    rec = tmp_path / "house8.gmreg"
    rec.write_text(_hostile_record("HOUSE-8\n", SigningKey.generate()))
    rc = main(["gateway", "meters", "add", "--config", str(cfg), str(rec)])
    out = capsys.readouterr()
    assert rc != 0, out.out
    assert "meter_id" in out.err
    reg = Registry(tmp_path / "registry.sqlite")
    try:
        assert reg.all() == []
    finally:
        reg.close()


@pytest.mark.parametrize("value", [v for v in HOSTILE if v.values[0]])  # username "" = anonymous
@pytest.mark.parametrize("key", ["client_id", "share_group", "username"])
def test_gateway_config_refuses_hostile_mqtt_identifiers(key: str, value: str) -> None:
    """The gateway's MQTT identifiers were only checked for being non-empty ("gw-1\\n" and "grp/+" passed)."""
    from gateway.config import ConfigError
    from gateway.config import parse_config as parse_gateway_config

    with pytest.raises(ConfigError) as e:
        parse_gateway_config({"mqtt": {key: value}, "dashboard": {"enabled": False}})
    assert f"mqtt.{key}" in str(e.value)


def test_gateway_config_default_mqtt_identifiers_still_pass() -> None:
    from gateway.config import parse_config as parse_gateway_config

    cfg = parse_gateway_config({"mqtt": {"client_id": "gw-2", "share_group": "gridmeter-gateway", "username": "gw"},
                                "dashboard": {"enabled": False}})
    assert (cfg.mqtt.client_id, cfg.mqtt.share_group, cfg.mqtt.username) == ("gw-2", "gridmeter-gateway", "gw")
