"""agent_toml: the emitted TOML parses back to the same document; merge rules; the CLI's --help everywhere."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

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


STEPS = ("scan", "commission", "keygen", "register", "rotate-key", "mqtt-credentials")


def _help(step: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        main(["provision", step, "--help"])
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines: compare on single spaces


def test_help_shows_the_real_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    from provisioning.commission import DEFAULT_WAIT_S
    from provisioning.scan import DEFAULT_TIMEOUT_S

    helps = {step: _help(step, capsys) for step in STEPS}
    assert not [s for s, h in helps.items() if "default None" in h]
    assert f"(default {DEFAULT_TIMEOUT_S:g})" in helps["scan"]
    assert f"(default {DEFAULT_WAIT_S:g})" in helps["commission"]


def test_installer_guide_is_true_to_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    """Every step has a section in INSTALLER.md, and every flag the guide uses with a step exists in its --help."""
    guide = (Path(__file__).resolve().parents[2] / "provisioning" / "INSTALLER.md").read_text()
    commands = re.findall(r"gridmeter provision ([a-z-]+)((?:\\\n|[^\n`])*)", guide)
    used: dict[str, set[str]] = {}
    for step, rest in commands:
        used.setdefault(step, set()).update(re.findall(r"(--[a-z][a-z0-9-]*)", rest))
    assert set(STEPS) <= set(used), f"steps without an example: {set(STEPS) - set(used)}"
    for step, flags in used.items():
        assert step in STEPS, step
        text = _help(step, capsys)
        assert not [f for f in flags if f not in text], step


def test_provision_without_step_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["provision"]) == 2
    assert "scan" in capsys.readouterr().out
