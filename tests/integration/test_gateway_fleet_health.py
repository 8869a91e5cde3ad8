"""Fleet health on the dashboard API, /metrics and the CLI (issue 14's observations, each a test):
- a meter whose agent stopped 2.5 min ago was shown green "active" with "3 min" as plain text: now `late`,
  counted, sorted first and filterable;
- held readings showed Held = 3 beside "active" and the reason only in /api/meters/ID: now state `held` with
  reason clock_unsynced in the fleet API, /api/held, `gateway held`, and readings_held_total{reason};
- /metrics had no per-meter last-seen figure and no state counts;
- /login always went to the fleet view;
- `gateway meters list` showed only the registry and refused to run without the dashboard secret."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from gateway.config import DashboardSection
from gateway.web import Dashboard
from tests.fleet_support import Fleet, every_state, hold_intervals, open_fleet

pytestmark = pytest.mark.integration

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Fleet]]:
    f = open_fleet(tmp_path)
    every_state(f)
    d = Dashboard(DashboardSection(token=TOKEN), tmp_path / "gateway.sqlite", tmp_path / "registry.sqlite",
                  f.metrics, clock=lambda: f.clock[0])
    srv = TestServer(d.app(), host="127.0.0.1")
    await srv.start_server()
    try:
        yield str(srv.make_url("")).rstrip("/"), f
    finally:
        await srv.close()
        d.close()
        f.close()


async def _get(url: str, **params: str) -> dict:  # type: ignore[type-arg]
    async with aiohttp.ClientSession() as s, s.get(url, params=params, headers=AUTH) as r:
        assert r.status == 200, await r.text()
        return await r.json()  # type: ignore[no-any-return]


async def test_states_counted_sorted_filtered_paginated(served: tuple[str, Fleet]) -> None:
    base, _f = served
    doc = await _get(base + "/api/meters")
    assert doc["counts"] == {"silent": 1, "late": 1, "rejecting": 1, "held": 1, "new": 1, "suspended": 0, "ok": 1,
                             "retired": 1}
    by_id = {m["meter_id"]: m for m in doc["meters"]}
    assert {k: (m["state"], m["state_reason"]) for k, m in by_id.items()} == {
        "SILENT-1": ("silent", None), "LATE-1": ("late", None), "REJ-1": ("rejecting", "counter_decreased"),
        "HELD-1": ("held", "clock_unsynced"), "NEW-1": ("new", None), "OK-1": ("ok", None),
        "RET-1": ("retired", None)}
    late = by_id["LATE-1"]
    assert late["heard_age_s"] == 150 and late["expected_interval_s"] == 10.0  # cadence learnt from its readings
    assert late["state_text"] == "last heard 2 min ago (expected every 10 s)"
    assert by_id["HELD-1"]["held"] == 4 and by_id["HELD-1"]["held_detail"] == "clock_unsynced"
    # worst first by default
    assert [m["meter_id"] for m in doc["meters"]] == ["SILENT-1", "LATE-1", "REJ-1", "HELD-1", "NEW-1", "OK-1",
                                                      "RET-1"]
    doc = await _get(base + "/api/meters", state="late,silent", sort="meter")
    assert (doc["matched"], [m["meter_id"] for m in doc["meters"]]) == (2, ["LATE-1", "SILENT-1"])
    doc = await _get(base + "/api/meters", q="unsynced")  # reasons are searchable
    assert [m["meter_id"] for m in doc["meters"]] == ["HELD-1"]
    doc = await _get(base + "/api/meters", sort="meter", per_page="3", page="2")
    assert (doc["pages"], doc["total"], [m["meter_id"] for m in doc["meters"]]) == (3, 7, ["OK-1", "REJ-1", "RET-1"])
    async with aiohttp.ClientSession() as s:
        for bad, msg in (({"state": "sleepy"}, "state: unknown ['sleepy']"), ({"sort": "x"}, "sort: must be one of"),
                         ({"per_page": "5000"}, "per_page in 1..500")):
            async with s.get(base + "/api/meters", params=bad, headers=AUTH) as r:
                assert r.status == 400 and msg in await r.text()


async def test_held_reason_everywhere(served: tuple[str, Fleet]) -> None:
    base, f = served
    hold_intervals(f)
    held = await _get(base + "/api/held")
    assert sorted(i["reason"].split(":")[0] for i in held["intervals"]) == ["anomalous_ratio", "reconcile_mismatch"]
    assert {(r["meter_id"], r["reason"], r["detail"]) for r in held["readings"]} == {
        ("HELD-1", "clock_unsynced", "clock_unsynced")}
    assert len(held["readings"]) == 4
    one = await _get(base + "/api/meters/HELD-1")
    assert one["meter"]["state"] == "held" and one["meter"]["state_reason"] == "clock_unsynced"
    assert "clock_unsynced" in one["meter"]["state_text"] and len(one["held"]) == 4


async def test_metrics_states_reasons_last_seen(served: tuple[str, Fleet]) -> None:
    base, f = served
    hold_intervals(f)
    async with aiohttp.ClientSession() as s, s.get(base + "/metrics", headers=AUTH) as r:
        text = await r.text()
    for line in ('gridmeter_gateway_meters{state="late"} 1.0', 'gridmeter_gateway_meters{state="silent"} 1.0',
                 'gridmeter_gateway_meters{state="held"} 1.0', 'gridmeter_gateway_meters{state="suspended"} 0.0',
                 'gridmeter_gateway_meters_held{reason="clock_unsynced"} 1.0',
                 'gridmeter_gateway_readings_held_total{reason="clock_unsynced"} 4.0',
                 'gridmeter_gateway_readings_held_total{reason="partial"} 0.0',
                 'gridmeter_gateway_meter_lag_seconds_gcount 5.0',
                 'gridmeter_gateway_intervals_held{reason="anomalous_ratio"} 1.0',
                 'gridmeter_gateway_intervals_held{reason="reconcile_mismatch"} 1.0',
                 'gridmeter_gateway_readings_rejected_total{reason="counter_decreased",source="mqtt"} 1.0'):
        assert line in text, line
    seen = dict(re.findall(r'gridmeter_gateway_meter_last_seen_timestamp_seconds\{meter_id="([^"]+)"\} (\S+)', text))
    assert set(seen) == {"OK-1", "LATE-1", "SILENT-1", "HELD-1", "REJ-1"}  # heard from, not retired
    assert abs(float(seen["LATE-1"]) - (f.now() - 150)) < 0.01
    # intake lag: newest stored reading of each meter per batch (0.5 s old when it arrived): 6 batches stored some
    assert re.search(r'gridmeter_gateway_intake_lag_seconds_bucket\{le="1\.0"\} 6\.0', text)
    assert "gridmeter_gateway_chain_rpc_up" not in text  # no submitter in this process: no "down" either


async def test_login_returns_to_the_page_asked_for(served: tuple[str, Fleet]) -> None:
    base, _f = served
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        for nxt, where in (("/meter/LATE-1", "/meter/LATE-1"), ("//evil.example/x", "/"),
                           ("https://evil.example/", "/"), ("/meter/LATE-1\n", "/"), ("", "/")):
            async with s.get(base + "/login", params={"token": TOKEN, "next": nxt}, allow_redirects=False) as r:
                assert (r.status, r.headers["Location"]) == (302, where), nxt
        async with s.post(base + "/login", data={"token": TOKEN, "next": "/meter/HELD-1"},
                          allow_redirects=False) as r:
            assert (r.status, r.headers["Location"]) == (302, "/meter/HELD-1")
    async with aiohttp.ClientSession() as s:  # no cookie: a browser asking for a page gets the form, next kept
        async with s.get(base + "/meter/HELD-1", headers={"Accept": "text/html"}) as r:
            page = await r.text()
            assert r.status == 401 and 'name="next" value="/meter/HELD-1"' in page
        async with s.post(base + "/login", data={"token": "wrong", "next": "/"}, headers={"Accept": "text/html"}) as r:
            assert r.status == 401 and "That token is not right." in await r.text()


def _cfg(tmp_path: Path) -> Path:
    """A config with no dashboard secret at all (the dashboard is enabled by default)."""
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'[gateway]\nstate_dir = "{tmp_path}"\n')
    return cfg


def test_cli_meters_list_shows_health_without_the_dashboard_secret(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    from gridmeter.cli import main
    from tests.gateway_support import record_for

    f = open_fleet(tmp_path)
    every_state(f)
    f.close()
    cfg = _cfg(tmp_path)
    rec = tmp_path / "EXTRA-1.gmreg"
    rec.write_text(record_for("EXTRA-1") + "\n")
    assert main(["gateway", "meters", "add", str(rec), "--config", str(cfg)]) == 0
    assert "EXTRA-1: added" in capsys.readouterr().out
    assert main(["gateway", "meters", "list", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:10] == ["METER", "STATE", "LAST", "SEEN", "AGO", "LAG", "EVERY", "ACCEPTED", "HELD",
                                   "REJECTED"]
    rows = {line.split()[0]: line for line in out[1:]}
    late = rows["LATE-1"].split()
    assert late[1] == "late" and re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", late[2])
    assert late[3:6] == ["2", "min", "2"] or late[3] == "2"  # "2 min" ago (age text has a space)
    assert " held (clock_unsynced) " in rows["HELD-1"] and "rejecting (counter_decreased)" in rows["REJ-1"]
    assert main(["gateway", "meters", "list", "--json", "--state", "late,held", "--config", str(cfg)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["meter_id"], r["state"], r["accepted"], r["held"]) for r in doc] == [("HELD-1", "held", 3, 4),
                                                                                  ("LATE-1", "late", 9, 0)]
    assert doc[1]["last_seen"].endswith("Z") and doc[1]["lag_s"] >= 150
    assert main(["gateway", "meters", "suspend", "OK-1", "--config", str(cfg)]) == 0


def test_cli_held_lists_reasons(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from gridmeter.cli import main

    f = open_fleet(tmp_path)
    every_state(f)
    f.close()
    assert main(["gateway", "held", "--config", str(_cfg(tmp_path))]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "HELD-1" in line]
    assert len(lines) == 4 and all("clock_unsynced" in line for line in lines)
    assert re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ HELD-1", lines[0])


def test_cli_authority_key_prints_base58_that_the_chain_accepts(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """`gateway keygen` printed hex; `chain serve --chain-bridge` needs base58: authority-key prints that."""
    from solders.pubkey import Pubkey

    from gateway.oracle.authority_key import load_authority_keypair
    from gridmeter.cli import main

    path = tmp_path / "chain-bridge.json"
    assert main(["gateway", "authority-key", str(path)]) == 0
    printed = capsys.readouterr().out.strip().rsplit(" ", 1)[-1]
    assert Pubkey.from_string(printed) == load_authority_keypair(path).pubkey()
    assert path.stat().st_mode & 0o777 == 0o600
    assert main(["gateway", "authority-key", "--show", str(path)]) == 0
    assert capsys.readouterr().out.strip().endswith(printed)
    assert main(["gateway", "authority-key", str(path)]) == 2  # never overwrites a key
    assert "already exists" in capsys.readouterr().err


def test_state_changes_are_logged_one_line_each(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    f = open_fleet(tmp_path)
    every_state(f)
    d = Dashboard(DashboardSection(token=TOKEN), tmp_path / "gateway.sqlite", tmp_path / "registry.sqlite",
                  f.metrics, clock=lambda: f.clock[0])
    try:
        with caplog.at_level("INFO", logger="gateway.web"):
            assert d.log_state_changes() == ["fleet: 1 held, 1 late, 1 new, 1 ok, 1 rejecting, 1 retired, 1 silent"]
            assert d.log_state_changes() == []  # nothing changed: nothing said
            f.clock[0] += 30  # OK-1 and the others fall silent for 30 s more
            assert d.log_state_changes() == [
                "meter HELD-1: held -> late: last heard 33 s ago (expected every 12 s)",
                "meter OK-1: ok -> late: last heard 32 s ago (expected every 10 s)",
                "meter REJ-1: rejecting -> late: last heard 32 s ago (expected every 10 s)"]
            f.clock[0] += 300
            lines = d.log_state_changes()
            assert lines == ["meter HELD-1: late -> silent: nothing heard for 5 min (expected every 12 s)",
                             "meter LATE-1: late -> silent: nothing heard for 8 min (expected every 10 s)",
                             "meter OK-1: late -> silent: nothing heard for 5 min (expected every 10 s)",
                             "meter REJ-1: late -> silent: nothing heard for 5 min (expected every 10 s)"]
        assert [r.levelname for r in caplog.records] == ["INFO"] + ["WARNING"] * 7
    finally:
        d.close()
        f.close()


def test_many_changes_at_once_are_one_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A broker outage silences the whole fleet: one summary line, not one per meter."""
    from tests.gateway_support import record_for

    f = open_fleet(tmp_path)
    for i in range(12):
        f.registry.add(record_for(f"M{i:02d}"), int(f.now() * 1000))
        f.send(f"M{i:02d}", 3)
    d = Dashboard(DashboardSection(token=TOKEN), tmp_path / "gateway.sqlite", tmp_path / "registry.sqlite",
                  f.metrics, clock=lambda: f.clock[0])
    try:
        assert d.log_state_changes() == ["fleet: 12 ok"]
        f.clock[0] += 60
        with caplog.at_level("WARNING", logger="gateway.web"):
            assert d.log_state_changes() == ["12 meters changed state: 12 ok -> late"]
        assert len(caplog.records) == 1
    finally:
        d.close()
        f.close()
