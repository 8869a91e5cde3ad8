"""Pure parts of the household features: today's kWh, plain-words status, Home Assistant payloads."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import pytest

from agent.config import HomeAssistantSection
from agent.homeassistant import discovery_messages, kwh_text, meter_states, slug
from agent.household import DayCounters, explain, summary
from gridmeter.cli import main


def ms(y: int, mo: int, d: int, h: int, mi: int = 0) -> int:
    return int(time.mktime((y, mo, d, h, mi, 0, 0, 0, -1))) * 1000


def test_today_counts_register_movement_and_rolls_over_at_local_midnight() -> None:
    day = DayCounters()
    day.observe("M", ms(2026, 12, 1, 7, 12), 1_000_000, 50_000, 1500)
    day.observe("M", ms(2026, 12, 1, 18), 1_004_321, 52_000, -800)
    s = day.snapshot()["M"]
    assert (s["today_import_wh"], s["today_export_wh"], s["power_w"]) == (4_321, 2_000, -800)
    assert s["today_since_ms"] == ms(2026, 12, 1, 7, 12) and not s["today_from_midnight"]  # started mid-day
    day.observe("M", ms(2026, 12, 2, 0, 1), 1_004_400, 52_000, 100)  # next day: yesterday's last is the base
    s = day.snapshot()["M"]
    assert (s["today_import_wh"], s["today_export_wh"]) == (79, 0) and s["today_from_midnight"]
    day.observe("M", ms(2026, 12, 2, 9), 12, 0, 100)  # meter replaced: counters restart, no negative kWh
    s = day.snapshot()["M"]
    assert (s["today_import_wh"], s["today_export_wh"]) == (0, 0) and s["import_wh"] == 12


def health(**over: Any) -> dict[str, Any]:
    now = 1_800_000_000_000
    h: dict[str, Any] = {
        "status": "ok", "now_ms": now, "last_read_ms": now - 3_000, "last_publish_ms": now - 2_000,
        "last_ack_ms": now - 1_000,
        "queue": {"depth": 4, "commit_error": "", "full": False, "oldest_read_at_ms": now - 5_000,
                  "oldest_age_s": 5.0},
        "mqtt": {"connected": True, "last_connect_error": ""},
        "clock": {"synced": True, "source": "timedatectl", "detail": ""},
        "devices": {"HOUSE-1": {"consecutive_errors": 0, "last_read_ms": now - 3_000, "last_error": None,
                                "glitches": 0, "last_glitch": ""}},
        "household": {"HOUSE-1": {"power_w": 2300, "import_wh": 1_234_567, "export_wh": 0, "today_import_wh": 4_321,
                                  "today_export_wh": 0, "today_since_ms": now - 36_000_000,
                                  "today_from_midnight": True, "read_at_ms": now - 3_000}},
    }
    for k, v in over.items():
        h[k] = {**h[k], **v} if isinstance(v, dict) and k not in ("devices",) else v
    return h


def test_explain_says_what_is_wrong_and_what_to_do() -> None:
    assert explain(health()) == []
    unsynced = explain(health(clock={"synced": False, "source": "timedatectl"}))
    assert len(unsynced) == 1 and "clock is not synchronised" in unsynced[0] and "timedatectl" in unsynced[0]
    down = explain(health(mqtt={"connected": False, "last_connect_error": "Not authorized"},
                          devices={"HOUSE-1": {"consecutive_errors": 3, "last_error": "meter HOUSE-1: timeout",
                                               "last_read_ms": 1_800_000_000_000 - 600_000}}))
    assert "Not connected to the gateway's message broker (Not authorized)" in down[0]
    assert "kept safely on the SD card" in down[0]
    assert "Meter HOUSE-1 does not answer (meter HOUSE-1: timeout); last good reading 10 min ago" in down[1]


def test_summary_is_plain_words_not_json() -> None:
    text = summary(health(status="degraded", clock={"synced": False, "source": "adjtimex"}))
    assert text.splitlines()[0] == "gridmeter agent: needs attention"
    assert "last reading 3 s ago, last sent 2 s ago, last confirmed by the gateway 1 s ago" in text
    assert "waiting to be confirmed: 4 readings (oldest from 5 s ago)" in text
    assert "clock: NOT synchronised (adjtimex)" in text
    assert "meter HOUSE-1: ok, last read 3 s ago, 2300 W now, today +4.321 kWh import / +0.000 kWh export" in text
    assert "What needs attention:" in text and "{" not in text


class _Health(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *_a: object) -> None:
        pass


@pytest.mark.parametrize("as_json", [False, True])
def test_agent_status_cli_plain_by_default_json_on_request(as_json: bool, capsys: pytest.CaptureFixture[str]) -> None:
    _Health.body = json.dumps(health(status="degraded", clock={"synced": False, "source": "adjtimex"})).encode()
    srv = HTTPServer(("127.0.0.1", 0), _Health)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        rc = main(["agent", "status", "--url", f"http://127.0.0.1:{srv.server_port}/health",
                   *(["--json"] if as_json else [])])
    finally:
        srv.shutdown()
        srv.server_close()
    out = capsys.readouterr().out
    assert rc == 1  # degraded
    if as_json:
        assert json.loads(out)["clock"]["synced"] is False
    else:
        assert "The clock is not synchronised yet" in out and not out.lstrip().startswith("{")


@pytest.mark.parametrize(("wh", "text"), [(0, "0.000"), (1, "0.001"), (1_234_567, "1234.567"), (2**63 - 1,
                                          "9223372036854775.807"), (-1500, "-1.500")])
def test_kwh_text_is_exact(wh: int, text: str) -> None:
    assert kwh_text(wh) == text


def test_discovery_topics_and_ids_are_valid_for_home_assistant() -> None:
    msgs = discovery_messages(HomeAssistantSection(enabled=True, discovery_prefix="ha"), "agent.1",
                              {"PV.2": "fronius-gen24"}, "0.1.0")
    assert [t for t, _ in msgs] == [f"ha/sensor/gridmeter_PV_2/{k}/config"
                                    for k in ("energy_import", "energy_export", "power")]
    body = json.loads(msgs[0][1])
    assert body["availability"][0]["topic"] == "gridmeter-ha/agent/agent_1/availability"
    assert body["device"] == {"identifiers": ["gridmeter_PV_2"], "name": "Meter PV.2", "manufacturer": "gridmeter",
                              "model": "fronius-gen24", "sw_version": "0.1.0"}
    assert slug("a.b/c+#") == "a_b_c__"


def test_meter_states_and_availability() -> None:
    now = 1_800_000_000_000
    hh = {"M": {"import_wh": 1_000_001, "export_wh": 5, "power_w": None, "read_at_ms": now - 5_000}}
    got = meter_states(hh, {"M": {"consecutive_errors": 0}, "N": {"consecutive_errors": 0}}, now, 10.0)
    assert got["M"] == (b'{"export_kwh": "0.005", "import_kwh": "1000.001"}', "online")
    assert got["N"] == (None, "offline")  # no good reading yet
    assert meter_states(hh, {"M": {"consecutive_errors": 2}}, now, 10.0)["M"][1] == "offline"
    assert meter_states(hh, {"M": {"consecutive_errors": 0}}, now + 61_000, 10.0)["M"][1] == "offline"  # stale


@pytest.mark.parametrize(("section", "values", "error"), [
    ("status", {"chain_rpc_url": "http://127.0.0.1:8899"}, "status.chain_program_id: required with chain_rpc_url"),
    ("status", {"chain_rpc_url": "ftp://x", "chain_program_id": "11111111111111111111111111111111"},
     "status.chain_rpc_url: must be an http:// or https:// URL"),
    ("status", {"chain_rpc_url": "http://h:1", "chain_program_id": "not-base58!"},
     "status.chain_program_id: must be a base58 Solana"),
    ("status", {"chain_refresh_s": 1}, "status.chain_refresh_s"),
    ("homeassistant", {"discovery_prefix": "home/assistant"}, "homeassistant.discovery_prefix: 1-64 of"),
    ("homeassistant", {"enabled": "yes"}, "homeassistant.enabled"),
    ("homeassistant", {"bogus": 1}, "homeassistant.bogus"),
])
def test_page_and_home_assistant_config_errors_name_the_key(section: str, values: dict[str, Any], error: str) -> None:
    from agent.config import ConfigError
    from tests.unit.test_agent_config import base_doc, parse

    doc = base_doc()
    doc[section] = values
    with pytest.raises(ConfigError, match=error.replace("(", r"\(").replace(".", r"\.")):
        parse(doc)


def test_home_assistant_defaults_and_password_from_env() -> None:
    from tests.unit.test_agent_config import base_doc, parse

    assert parse(base_doc()).homeassistant.enabled is False
    doc = base_doc()
    doc["homeassistant"] = {"enabled": True, "host": "ha.local", "username": "gm"}
    ha = parse(doc, env={"GRIDMETER_HA_MQTT_PASSWORD": "s3cret-from-env"}).homeassistant
    assert (ha.enabled, ha.host, ha.port, ha.discovery_prefix, ha.password) == (
        True, "ha.local", 1883, "homeassistant", "s3cret-from-env")
    assert "s3cret" not in repr(ha)


def test_agent_with_the_default_config_does_not_load_the_chain_libraries() -> None:
    """solders alone is ~20 MB of RSS (the budget is 60 MB): only a configured chain view imports it."""
    import subprocess
    import sys

    code = ("import sys, agent.cli, agent.service, agent.status, agent.publisher, agent.poller; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'solders', 'solana', 'oracle_interface'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
