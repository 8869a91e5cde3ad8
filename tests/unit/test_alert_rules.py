"""The Prometheus alert rules (ops/prometheus) pass promtool's check and unit tests, and every metric they use is
one the gateway exports (so a renamed metric cannot leave an alert that never fires)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from prometheus_client import generate_latest

from gateway.metrics import FleetFigures, Metrics

RULES_DIR = Path(__file__).resolve().parents[2] / "ops" / "prometheus"
RULES = RULES_DIR / "gridmeter-gateway.rules.yml"
RULE_TESTS = RULES_DIR / "gridmeter-gateway.rules.test.yml"


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool missing: scripts/bootstrap installs Debian's prometheus package, which ships it"
    return subprocess.run([exe, *args], capture_output=True, text=True, cwd=RULES_DIR, timeout=120, check=False)


def test_rules_pass_promtool_check() -> None:
    res = _promtool("check", "rules", str(RULES))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS: 6 rules found" in res.stdout


def test_rules_pass_promtool_unit_tests() -> None:
    res = _promtool("test", "rules", str(RULE_TESTS))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SUCCESS" in res.stdout


def test_every_metric_in_the_rules_is_exported() -> None:
    m = Metrics()
    m.chain.start(900)
    m.epoch.set(900)
    m.add_fleet_collector(lambda: FleetFigures({"ok": 1}, {}, [3], {"HOUSE-1": 1.0}))
    m.add_outbox_collector(lambda: {"counts": {"pending": 0}, "oldest_age_s": 0.0})
    m.received.labels("mqtt").inc()
    m.rejected.labels("mqtt", "bad_signature").inc()
    m.intake_lag.observe(2)
    exported = set(re.findall(r"^(gridmeter_gateway_\w+?)(?:\{| )", generate_latest(m.registry).decode(), re.M))
    exported |= {re.sub(r"_(bucket|count|sum|created)$", "", n) for n in exported}  # histogram family names
    used = set(re.findall(r"gridmeter_gateway_\w+", RULES.read_text()))
    # the rules' descriptions may name related metrics too: all of them must exist
    assert used and used <= exported, sorted(used - exported)
