"""agent_toml: the emitted TOML parses back to the same document; merge rules; the CLI's --help everywhere."""

from __future__ import annotations

import tomllib

import pytest

from gridmeter.cli import main
from provisioning.agent_toml import dumps, merge_meter


def test_dumps_round_trips_with_escapes() -> None:
    doc = {
        "agent": {"state_dir": "/var/lib/grid meter", "key_file": '/etc/"q"\\k', "poll_interval_s": 2.5},
        "clock": {"require_sync": True, "check": "file:/run/synced"},
        "mqtt": {"host": "h", "port": 1883, "password": "p\u00e4ss\n#x"},
        "buses": [{"name": "rs485-0", "kind": "rtu", "port": "/dev/ttyAMA0", "baudrate": 9600}],
        "meters": [{"meter_id": "A-1", "bus": "rs485-0", "unit_id": 1, "profile": "eastron-sdm630"},
                   {"meter_id": "A-2", "bus": "rs485-0", "unit_id": 2, "profile": "eastron-sdm120"}],
    }
    assert tomllib.loads(dumps(doc, header="line 1\nline 2")) == doc


def test_merge_replaces_meter_and_reuses_bus_by_device() -> None:
    doc = {"buses": [{"name": "bus-a", "kind": "rtu", "port": "/dev/ttyUSB0", "baudrate": 9600}],
           "meters": [{"meter_id": "A-1", "bus": "bus-a", "unit_id": 1, "profile": "p"}]}
    new = merge_meter(doc, {"mqtt": {"host": "b", "port": None}},
                      {"name": "rs485-ttyUSB0", "kind": "rtu", "port": "/dev/ttyUSB0", "baudrate": 19200},
                      {"meter_id": "A-1", "unit_id": 4, "profile": "q"})
    assert new["buses"] == [{"name": "bus-a", "kind": "rtu", "port": "/dev/ttyUSB0", "baudrate": 19200}]
    assert new["meters"] == [{"meter_id": "A-1", "unit_id": 4, "profile": "q", "bus": "bus-a"}]
    assert new["mqtt"] == {"host": "b"}
    assert doc["meters"][0]["unit_id"] == 1  # pure: the input is untouched


@pytest.mark.parametrize("step", ["scan", "commission", "keygen", "register", "rotate-key", "mqtt-credentials"])
def test_help_everywhere(step: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["provision", step, "--help"])
    assert exc.value.code == 0
    assert "usage: gridmeter provision " + step in capsys.readouterr().out


def test_provision_without_step_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["provision"]) == 2
    assert "scan" in capsys.readouterr().out
