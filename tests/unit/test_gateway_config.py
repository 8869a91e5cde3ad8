"""gateway.config: typed, unknown keys rejected, errors name key path and value, env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import DEFAULT_PROGRAM_ID, ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "firmware_config" / "gateway.example.toml"
AUTH = {"dashboard": {"token": "t" * 32}}


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.chain.program_id == DEFAULT_PROGRAM_ID
    assert cfg.intervals.epoch_s == 900
    assert cfg.mqtt.share_group


def test_defaults() -> None:
    cfg = parse_config(AUTH)
    assert cfg.limits.future_skew_s == 30 and cfg.chain.rpc_url.startswith("http")


@pytest.mark.parametrize(("data", "message"), [
    ({"mqtt": {"prot": 1}}, "mqtt.prot: unknown key"),
    ({"nope": {}}, "nope: unknown section"),
    ({"mqtt": {"port": 70000}}, "mqtt.port: must be in 1..65535 (got 70000)"),
    ({"mqtt": {"port": "1883"}}, "mqtt.port: must be an integer (got '1883')"),
    ({"limits": {"future_skew_s": 90}}, "limits.future_skew_s: must be in 0..59 (got 90)"),
    ({"chain": {"program_id": "xyz"}}, "chain.program_id: must be a base58 Solana public key"),
    ({"chain": {"rpc_url": "ftp://x"}}, "chain.rpc_url: must be an http(s):// URL"),
    ({"http": {"enabled": True}}, "http.api_keys: the HTTP ingest needs at least one API key"),
    ({"dashboard": {"listen": "8090"}}, "dashboard.listen: must be HOST:PORT"),
])
def test_errors_name_path_and_value(data: dict, message: str) -> None:  # type: ignore[type-arg]
    merged = {**AUTH, **data}
    if "dashboard" in data:
        merged["dashboard"] = {**AUTH["dashboard"], **data["dashboard"]}
    with pytest.raises(ConfigError) as e:
        parse_config(merged)
    assert message in str(e.value)


def test_dashboard_requires_auth() -> None:
    with pytest.raises(ConfigError, match=r"dashboard\.token"):
        parse_config({})


def test_env_overrides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDMETER_GATEWAY_DASHBOARD_TOKEN", "from-env")
    monkeypatch.setenv("GRIDMETER_GATEWAY_INGEST_API_KEYS", "k1, k2")
    monkeypatch.setenv("GRIDMETER_GATEWAY_MQTT_PASSWORD", "pw")
    cfg = parse_config({"http": {"enabled": True}})
    assert cfg.dashboard.token == "from-env" and cfg.http.api_keys == ["k1", "k2"] and cfg.mqtt.password == "pw"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)
