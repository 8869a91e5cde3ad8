"""`gridmeter demo` (what `scripts/demo` runs) keeps working: every meter's energy reaches the local chain,
nothing is rejected, and the on-chain totals never exceed what the registers moved."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.system

SUMMARY = re.compile(
    r"^\s+(?P<meter>\S+)\s+registers \+(?P<imp>\d+) import / \+(?P<exp>\d+) export; on chain produced "
    r"(?P<prod>\d+), consumed (?P<cons>\d+); gateway accepted (?P<acc>\d+) readings, rejected (?P<rej>\d+)$",
    re.M,
)


def test_demo_moves_energy_from_simulated_meters_to_the_chain(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "gridmeter.cli", "demo", "--duration", "15", "--workdir",
                          str(tmp_path)], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = {m["meter"]: {k: int(v) for k, v in m.groupdict().items() if k != "meter"}
            for m in SUMMARY.finditer(out.stdout)}
    assert set(rows) == {"HOUSE-1", "FLAT-2", "SHOP-3", "PV-4"}, out.stdout[-3000:]
    for meter, r in rows.items():
        assert r["rej"] == 0, (meter, r)
        assert r["acc"] >= 5, (meter, r)
        assert 0 <= r["cons"] <= r["imp"] and 0 <= r["prod"] <= r["exp"], (meter, r)  # never more than moved
    # consumers and the grid meter import, the PV meter exports: each has energy confirmed on chain
    assert rows["HOUSE-1"]["cons"] > 0 and rows["FLAT-2"]["cons"] > 0 and rows["PV-4"]["prod"] > 0, rows
    assert not list(tmp_path.glob("*.log")) or all(
        "Traceback" not in p.read_text(errors="replace") for p in tmp_path.glob("*.log")), "a service crashed"


def test_demo_json_reports_energy_conserved_per_meter(tmp_path: Path) -> None:
    """`gridmeter demo --meters 6 --json`: unattended, one JSON object as stdout's last line; every meter's
    on-chain MeterState totals equal its register movement (closed intervals, open interval stated apart)."""
    import json

    out = subprocess.run([sys.executable, "-m", "gridmeter.cli", "demo", "--meters", "6", "--duration", "15",
                          "--json", "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["energy_conserved"] is True, report
    assert report["failed_transactions"] == 0 and not any(report["tracebacks"].values()), report
    assert report["publish_conflicts"] == [], report
    meters = report["meters"]
    assert len(meters) == 6 and {m["link"] for m in meters.values()} == {"rtu", "tcp"}, meters.keys()
    moved = 0
    for mid, m in meters.items():
        reg, closed, chain, rd, gap = (m["registers"], m["closed_intervals"], m["on_chain"], m["readings"],
                                      m["open_interval"])
        assert m["energy_conserved"] is True and m["duplicate_submissions"] == 0, (mid, m)
        # on chain == the closed intervals' movement, exactly; closed + open == the registers' movement
        assert (chain["produced_wh"], chain["consumed_wh"]) == (closed["expected_produced_wh"],
                                                                closed["expected_consumed_wh"]), (mid, m)
        assert closed["import_wh"] + gap["import_wh"] == reg["moved_import_wh"], (mid, m)
        assert closed["export_wh"] + gap["export_wh"] == reg["moved_export_wh"], (mid, m)
        assert reg["import_wh_end"] - reg["import_wh_start"] == reg["moved_import_wh"], (mid, m)
        assert rd["rejected"] == 0 and rd["accepted"] >= 5, (mid, rd)
        assert rd["read"] >= rd["published"] >= rd["acked"] >= rd["accepted"] > 0, (mid, rd)
        moved += reg["moved_import_wh"] + reg["moved_export_wh"]
    assert moved > 0, meters
