"""Secrets (issue 8): the example config's placeholder dashboard token and a one-character dashboard password
were accepted (only the token's length was checked), and the gateway config's repr showed the MQTT password,
the dashboard token and the API keys. Weak values are now refused at start with a message saying how to make
a good one (`gridmeter gateway gen-token`), and no secret appears in a repr or an error message."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from gateway.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parents[2] / "firmware_config" / "gateway.example.toml"
STRONG = "Zq3-vN8x_Lk2Rt7Wm5Yp"
HINT = "gridmeter gateway gen-token"


def test_example_config_placeholder_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GRIDMETER_GATEWAY_DASHBOARD_TOKEN", raising=False)
    with pytest.raises(ConfigError) as exc:
        load_config(EXAMPLE)
    msg = str(exc.value)
    assert msg.startswith("dashboard.token: ") and HINT in msg and "change-me" not in msg


@pytest.mark.parametrize("token", [
    "change-me-to-a-long-random-token", "CHANGE_ME_please_0123456789", "your-token-goes-here-123", "example-token-8Hq2",
    "t" * 32, "abababababababababab", "abcdefghijklmnopqrstuvwxyz", "Qz8k4Wm2",
    "my secret dashboard 42",
])
def test_weak_dashboard_tokens_are_refused(token: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"dashboard": {"token": token}})
    assert str(exc.value).startswith("dashboard.token: ") and HINT in str(exc.value) and token not in str(exc.value)


@pytest.mark.parametrize("password", ["x", "hunter2", "Password1234567", "aaaaaaaaaaaaaaaa"])
def test_weak_dashboard_passwords_are_refused(password: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config({"dashboard": {"username": "staff", "password": password}})
    assert str(exc.value).startswith("dashboard.password: ") and HINT in str(exc.value)
    assert password not in str(exc.value)


def test_weak_api_keys_and_placeholder_mqtt_password_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"http\.api_keys: 1 of 2 keys: is a placeholder"):
        parse_config({"dashboard": {"token": STRONG},
                      "http": {"enabled": True, "api_keys": [STRONG, "replace-me-with-a-key-0123"]}})
    with pytest.raises(ConfigError, match=r"mqtt\.password: is a placeholder"):
        parse_config({"dashboard": {"token": STRONG}, "mqtt": {"password": "change-me"}})


def test_strong_values_pass() -> None:
    cfg = parse_config({"dashboard": {"token": STRONG, "username": "staff", "password": "Kp9-vR2m_Xw4"},
                        "http": {"enabled": True, "api_keys": [STRONG[::-1]]}, "mqtt": {"password": "pw"}})
    assert cfg.dashboard.password == "Kp9-vR2m_Xw4"


def test_no_secret_in_any_repr(caplog: pytest.LogCaptureFixture) -> None:
    secrets = {"mqtt": "Mq-Pw-7hG2kL9xZ4", "token": "Tk-8vN3qR5mW2yP6", "password": "Pw-4cX9jB7nL1s",
               "api": "Ak-6zT1fH8dQ3rV5"}
    cfg = parse_config({"mqtt": {"password": secrets["mqtt"]},
                        "dashboard": {"token": secrets["token"], "username": "staff", "password": secrets["password"]},
                        "http": {"enabled": True, "api_keys": [secrets["api"]]}})
    logging.getLogger("test").info("config: %r %s", cfg, cfg)
    for text in (repr(cfg), str(cfg), repr(cfg.mqtt), repr(cfg.dashboard), repr(cfg.http), caplog.text):
        for s in secrets.values():
            assert s not in text
    assert "staff" in repr(cfg.dashboard)  # the rest is still shown


def test_gen_token_makes_a_value_the_checks_accept(capsys: pytest.CaptureFixture[str]) -> None:
    from gridmeter.cli import main

    tokens = set()
    for _ in range(20):
        assert main(["gateway", "gen-token"]) == 0
        tokens.add(capsys.readouterr().out.strip())
    assert len(tokens) == 20 and all(len(t) == 43 for t in tokens)
    for t in tokens:
        cfg = parse_config({"dashboard": {"token": t, "username": "u", "password": t},
                            "http": {"enabled": True, "api_keys": [t]}})
        assert cfg.dashboard.token == t


def test_a_disabled_service_does_not_check_its_secret() -> None:
    """Read-only CLI commands disable the dashboard and ingest: the example's placeholder must not stop them."""
    cfg = parse_config({"dashboard": {"enabled": False, "token": "change-me-to-a-long-random-token"}})
    assert not cfg.dashboard.enabled
