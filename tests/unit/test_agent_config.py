from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.config import ConfigError, load_config, parse_config

GW = "11" * 32  # any 32 bytes are a valid Ed25519 public key encoding for VerifyKey construction


def base_doc() -> dict[str, Any]:
    return {
        "agent": {"state_dir": "state", "key_file": "device.key", "poll_interval_s": 5},
        "clock": {"check": "always-synced"},
        "mqtt": {"host": "127.0.0.1", "port": 1883, "gateway_public_key": GW},
        "buses": [
            {"name": "rs485-0", "kind": "rtu", "port": "/dev/ttyAMA0", "baudrate": 9600},
            {"name": "tcp-0", "kind": "tcp", "host": "10.0.0.5"},
        ],
        "meters": [
            {"meter_id": "HOUSE-1", "bus": "rs485-0", "unit_id": 1, "profile": "eastron-sdm630"},
            {"meter_id": "PV-1", "bus": "tcp-0", "unit_id": 1, "profile": "eastron-sdm120", "key_file": "pv.key"},
        ],
    }


def parse(doc: dict[str, Any], env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    return parse_config(doc, path=Path("/etc/gridmeter/agent.toml"), env=env or {})


def test_valid_config_is_typed_and_paths_resolved() -> None:
    cfg = parse(base_doc())
    assert cfg.agent.state_dir == Path("/etc/gridmeter/state")
    assert cfg.agent.poll_interval_s == 5.0 and isinstance(cfg.agent.poll_interval_s, float)
    assert cfg.mqtt.gateway_public_key == bytes.fromhex(GW)
    assert cfg.mqtt.client_id.startswith("gridmeter-agent-")
    assert cfg.buses[0].baudrate == 9600 and cfg.buses[1].tcp_port == 502
    assert cfg.key_file_for(cfg.meters[0]) == Path("/etc/gridmeter/device.key")
    assert cfg.key_file_for(cfg.meters[1]) == Path("/etc/gridmeter/pv.key")
    assert cfg.store.overflow == "drop_oldest"
    assert cfg.status.host_port == ("127.0.0.1", 9101)
    with pytest.raises(AttributeError):
        cfg.agent.poll_interval_s = 1  # type: ignore[misc]


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.replace("[", ".").replace("]", "").split(".")
    cur: Any = doc
    for p in parts[:-1]:
        cur = cur[int(p)] if p.isdigit() else cur.setdefault(p, {})
    cur[parts[-1]] = value


@pytest.mark.parametrize(
    "path, value, message",
    [
        ("buses[0].baudrate", 9601, "buses[0].baudrate: must be one of 1200, 2400, 4800, 9600, 19200, 38400, "
                                    "57600, 115200 (got 9601)"),
        ("buses[0].parity", "X", "buses[0].parity: must be one of N, E, O (got 'X')"),
        ("buses[0].kind", "serial", "buses[0].kind: must be one of rtu, tcp, rtu-over-tcp (got 'serial')"),
        ("buses[0].turbo", True, "buses[0].turbo: unknown key"),
        ("meters[0].unit_id", 0, "meters[0].unit_id: must be between 1 and 247 (got 0)"),
        ("meters[0].unit_id", "1", "meters[0].unit_id: must be an integer (got '1')"),
        ("meters[1].meter_id", "a/b", "meters[1].meter_id: must be 1-32 characters"),
        ("meters[1].bus", "nope", "meters[1].bus: no [[buses]] entry with this name (got 'nope')"),
        ("meters[1].meter_id", "HOUSE-1", "meters[1].meter_id: duplicate of meters[0] (got 'HOUSE-1')"),
        ("mqtt.gateway_public_key", "abc", "mqtt.gateway_public_key: must be 64 hex characters"),
        ("mqtt.port", 70000, "mqtt.port: must be between 1 and 65535 (got 70000)"),
        ("mqtt.batch_max", 5000, "mqtt.batch_max: must be between 1 and 1000 (got 5000)"),
        ("mqtt.tls_ca", "/nonexistent/ca.crt", "mqtt.tls_ca: file does not exist (got '/nonexistent/ca.crt')"),
        ("mqtt.tls_cert", __file__, "mqtt.tls_cert/tls_key: give both or neither"),
        ("mqtt.topic_prefix", "a/+/b", "mqtt.topic_prefix: must be 1-8 '/'-separated levels"),
        ("mqtt.topic_prefix", "a b/c", "mqtt.topic_prefix: must be 1-8 '/'-separated levels"),
        ("mqtt.client_id", "agent/1", "mqtt.client_id: must be 1-64 characters of"),
        ("store.overflow", "drop_newest", "store.overflow: must be one of drop_oldest, stop_reading"),
        ("clock.check", "ntp", 'clock.check: must be "auto", "always-synced" or "file:/path"'),
        ("clock.require_sync", "yes", "clock.require_sync: must be true or false (got 'yes')"),
        ("agent.poll_interval_s", 0, "agent.poll_interval_s: must be between 0.1 and 3600"),
        ("agent.poll_interval_s", True, "agent.poll_interval_s: must be a number (got True)"),
        ("status.listen", "9101", 'status.listen: must be "host:port"'),
        ("extra", {}, "extra: unknown key"),
        ("meters", {}, "meters: must be an array of tables"),
    ],
)
def test_errors_name_key_path_and_value(path: str, value: Any, message: str) -> None:
    doc = base_doc()
    _set(doc, path, value)
    with pytest.raises(ConfigError) as exc:
        parse(doc)
    assert message in str(exc.value)


def test_missing_required_and_cross_checks() -> None:
    doc = base_doc()
    del doc["mqtt"]["gateway_public_key"]
    del doc["buses"][0]["port"]
    doc["buses"][1]["name"] = "rs485-0"
    with pytest.raises(ConfigError) as exc:
        parse(doc)
    text = str(exc.value)
    assert "mqtt.gateway_public_key: required key is missing" in text
    assert 'buses[0].port: required for kind = "rtu"' in text
    assert "buses[1].name: duplicate of buses[0]" in text


def test_same_unit_on_same_bus_and_same_port_twice() -> None:
    doc = base_doc()
    doc["meters"][1]["bus"] = "rs485-0"
    doc["buses"].append({"name": "again", "kind": "rtu", "port": "/dev/ttyAMA0"})
    with pytest.raises(ConfigError) as exc:
        parse(doc)
    assert "meters[1].unit_id: same bus and unit id as meters[0]" in str(exc.value)
    assert "buses[2]: same device as buses[0]" in str(exc.value)


def test_no_meters_is_an_error() -> None:
    doc = base_doc()
    doc["meters"] = []
    with pytest.raises(ConfigError, match="meters: at least one"):
        parse(doc)


def test_env_overrides_secrets() -> None:
    doc = base_doc()
    doc["mqtt"]["password"] = "in-file"
    cfg = parse(doc, env={"GRIDMETER_MQTT_PASSWORD": "from-env", "GRIDMETER_MQTT_USERNAME": "agent1"})
    assert cfg.mqtt.password == "from-env" and cfg.mqtt.username == "agent1"
    assert "from-env" not in repr(cfg)


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[agent\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)


def test_example_config_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "firmware_config" / "agent.example.toml"
    cfg = load_config(example, env={})
    assert cfg.meters and cfg.buses


def test_profile_dirs_relative_and_checked(tmp_path: Path) -> None:
    (tmp_path / "profiles").mkdir()
    doc = base_doc()
    doc["agent"]["profile_dirs"] = ["profiles"]
    cfg = parse_config(doc, path=tmp_path / "agent.toml", env={})
    assert cfg.agent.profile_dirs == (tmp_path / "profiles",)
    doc["agent"]["profile_dirs"] = ["nope"]
    with pytest.raises(ConfigError, match=r"agent\.profile_dirs: directory does not exist \(got '.*/nope'\)"):
        parse_config(doc, path=tmp_path / "agent.toml", env={})


def test_client_certificate_without_ca_is_refused_not_silently_plaintext() -> None:
    """tls_cert + tls_key without tls_ca loaded fine, and the publisher (TLS switched on by tls_ca) then spoke
    plain MQTT: the operator believed the link was mutually authenticated."""
    doc = base_doc()
    doc["mqtt"].update(tls_cert=__file__, tls_key=__file__)
    with pytest.raises(ConfigError) as exc:
        parse(doc)
    assert "mqtt.tls_ca: required with a client certificate" in str(exc.value)
    doc["mqtt"]["tls_ca"] = __file__
    assert parse(doc).mqtt.tls_ca is not None
