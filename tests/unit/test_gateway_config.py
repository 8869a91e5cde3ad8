"""gateway.config: typed, unknown keys rejected, errors name key path and value, env overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import DEFAULT_PROGRAM_ID, ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "firmware_config" / "gateway.example.toml"
STRONG = "Zq3-vN8x_Lk2Rt7Wm5Yp"  # a token the weak-secret checks accept
AUTH = {"dashboard": {"token": STRONG}}


def test_example_config_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRIDMETER_GATEWAY_DASHBOARD_TOKEN", STRONG)  # its own token is a placeholder
    cfg = load_config(EXAMPLE)
    assert cfg.chain.program_id == DEFAULT_PROGRAM_ID
    assert cfg.intervals.epoch_s == 900
    assert cfg.mqtt.share_group


def test_defaults() -> None:
    cfg = parse_config(AUTH)
    assert cfg.limits.future_skew_s == 30 and cfg.chain.rpc_url.startswith("http")
    assert cfg.http.idle_close_s == 60


@pytest.mark.parametrize(("data", "message"), [
    ({"mqtt": {"prot": 1}}, "mqtt.prot: unknown key"),
    ({"nope": {}}, "nope: unknown section"),
    ({"mqtt": {"port": 70000}}, "mqtt.port: must be between 1 and 65535 (got 70000)"),
    ({"mqtt": {"port": "1883"}}, "mqtt.port: must be an integer (got '1883')"),
    ({"limits": {"future_skew_s": 90}}, "limits.future_skew_s: must be between 0 and 59 (got 90)"),
    ({"chain": {"program_id": "xyz"}}, "chain.program_id: must be a base58 Solana public key"),
    ({"chain": {"rpc_url": "ftp://x"}}, "chain.rpc_url: must be an http(s):// URL"),
    ({"http": {"enabled": True}}, "http.api_keys: the HTTP ingest needs at least one API key"),
    ({"dashboard": {"listen": "8090"}}, "dashboard.listen: must be HOST:PORT"),
    ({"http": {"idle_close_s": 0}}, "http.idle_close_s: must be between 1 and 86400 (got 0)"),
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
    monkeypatch.setenv("GRIDMETER_GATEWAY_DASHBOARD_TOKEN", "from-env-Qz8k4Wm2Lx")
    monkeypatch.setenv("GRIDMETER_GATEWAY_INGEST_API_KEYS", "key-one-Qz8k4Wm2Lx, key-two-Pv7j3Rn5Hy")
    monkeypatch.setenv("GRIDMETER_GATEWAY_MQTT_PASSWORD", "pw")
    cfg = parse_config({"http": {"enabled": True}})
    assert cfg.dashboard.token == "from-env-Qz8k4Wm2Lx"
    assert cfg.http.api_keys == ["key-one-Qz8k4Wm2Lx", "key-two-Pv7j3Rn5Hy"] and cfg.mqtt.password == "pw"


def test_mqtt_client_certificate_needs_ca() -> None:
    """Without tls_ca the intake connected in plain MQTT although a client certificate was configured."""
    with pytest.raises(ConfigError, match=r"mqtt\.tls_ca: required with a client certificate"):
        parse_config({**AUTH, "mqtt": {"tls_cert": "c.pem", "tls_key": "k.pem"}})
    assert parse_config({**AUTH, "mqtt": {"tls_ca": "ca.pem", "tls_cert": "c.pem", "tls_key": "k.pem"}}).mqtt.tls_ca


@pytest.mark.parametrize(("data", "message"), [
    # an empty API key matched a request without X-API-KEY (compare_digest(b"", b"") is True)
    ({"http": {"enabled": True, "api_keys": [""]}}, "http.api_keys: every key must be at least 16 characters"),
    ({"http": {"enabled": True, "api_keys": [STRONG, "short"]}}, "1 of 2 keys: must be at least 16 characters"),
    ({"dashboard": {"token": "letmein"}}, "dashboard.token: must be at least 16 characters"),
])
def test_weak_credentials_refused(data: dict, message: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(ConfigError) as exc:
        parse_config(data)
    assert message in str(exc.value) and "letmein" not in str(exc.value) and "short'" not in str(exc.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


@pytest.mark.parametrize("argv", [
    ["gateway", "meters", "list"], ["gateway", "meters", "suspend", "M1"], ["gateway", "rejections"],
    ["gateway", "outbox"], ["gateway", "meters", "add", "-"],
])
def test_cli_bad_config_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            argv: list[str]) -> None:
    """Every subcommand used to let ConfigError (or sqlite3.Error) escape as a traceback."""
    from gridmeter.cli import main

    bad = tmp_path / "gateway.toml"
    bad.write_text('[mqtt]\nport = "x"\n')
    assert main([*argv, "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err == "gridmeter gateway: mqtt.port: must be an integer (got 'x')\n"


def test_cli_unusable_state_dir_is_one_line_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gridmeter.cli import main

    (tmp_path / "state").write_text("a file where the state directory should be\n")
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[dashboard]\ntoken = "{STRONG}"\n')
    assert main(["gateway", "meters", "list", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gridmeter gateway: ") and "Traceback" not in err


@pytest.mark.parametrize("limit", ["0", "-1", "10001", "many"])
def test_cli_limit_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str], limit: str) -> None:
    from gridmeter.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["gateway", "rejections", "--limit", limit, "--config", str(tmp_path / "g.toml")])
    assert exc.value.code == 2
    assert "must be a whole number in 1..10000" in capsys.readouterr().err


def test_cli_oversized_record_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gridmeter.cli import main

    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[dashboard]\ntoken = "{STRONG}"\n')
    big = tmp_path / "record.txt"
    big.write_text("GMREG1:" + "A" * 20_000)
    assert main(["gateway", "meters", "add", str(big), "--config", str(cfg)]) == 2
    assert "over 16384 bytes" in capsys.readouterr().err


def test_cli_rejections_escape_control_characters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A claimed meter id from an unauthenticated HTTP body was printed raw: terminal escape sequences reached
    the operator's terminal."""
    from gateway.store.sqlite import RejectionRow, Store
    from gridmeter.cli import main

    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path / "state"}"\n[dashboard]\ntoken = "{STRONG}"\n')
    store = Store(tmp_path / "state" / "gateway.sqlite")
    store.add_rejection(RejectionRow(1_780_000_000_000, "http", None, "\x1b]0;pwned\x07", None, "unknown_meter",
                                     "detail\x1b[2J", False, b"{}", b""))
    store.close()
    assert main(["gateway", "rejections", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b]0;pwned\\x07" in out and "detail\\x1b[2J" in out
    assert main(["gateway", "rejections", "--json", "--config", str(cfg)]) == 0  # the evidence in full
    assert '"payload_hex": "7b7d"' in capsys.readouterr().out


def test_every_problem_is_reported_at_once() -> None:
    """The gateway reads its TOML through the same strict reader as the agent (base.toml_table): one run names
    every problem of the file, not just the first."""
    data = {**AUTH, "mqtt": {"port": "x", "prot": 1}, "limits": {"future_skew_s": 90}, "nope": {},
            "dashboard": {**AUTH["dashboard"], "password": "password123456"}}
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    msg = str(e.value)
    assert e.value.path == "nope" and msg.startswith("nope: unknown section (known: chain, dashboard,")
    for part in ("mqtt.port: must be an integer (got 'x')", "mqtt.prot: unknown key (known: client_id, enabled,",
                 "limits.future_skew_s: must be between 0 and 59 (got 90)", "dashboard.password: is a placeholder"):
        assert part in msg
    assert "4 more problem(s)" in msg and "password123456" not in msg


def test_rules_between_keys_are_all_reported() -> None:
    """The cross-key rules used to stop at the first that failed; now every one is named in one run."""
    with pytest.raises(ConfigError) as e:
        parse_config({"dashboard": {"username": "ops"}, "http": {"enabled": True},
                      "mqtt": {"tls_cert": "c.pem", "tls_key": "k.pem"}})
    msg = str(e.value)
    for part in ("dashboard.token: the dashboard needs a token", "dashboard.password: username and password go "
                 "together", "http.api_keys: the HTTP ingest needs at least one API key",
                 "mqtt.tls_ca: required with a client certificate"):
        assert part in msg
    assert "3 more problem(s)" in msg


def test_secret_of_the_wrong_type_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as e:
        parse_config({"dashboard": {"token": 12345678901234567890}, "http": {"api_keys": ["Zq3-vN8x_Lk2Rt7Wm5Yp", 7]}})
    msg = str(e.value)
    assert "dashboard.token: must be a string" in msg and "http.api_keys: must be a list of strings" in msg
    assert "12345678901234567890" not in msg and "Zq3-vN8x" not in msg
