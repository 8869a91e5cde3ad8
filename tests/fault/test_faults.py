"""Fault suite on the whole chain (testbed.stack: real agent, mosquitto, gateway and local-chain processes,
simulated meters counting in this process): >= 100 SIGKILLs of the agent, >= 20 of the gateway, >= 20 broker
restarts, a broker outage, the agent's disk full then freed, the agent's wall clock jumping back and forward.

After each run the meters stop counting and everything settles; then for every meter the on-chain MeterState totals
must equal the simulated registers' movement since the gateway's baseline reading exactly (integer Wh), with 0
duplicate submissions (MeterState.total_readings == confirmed outbox rows, 0 failed transactions), no reading
published twice with different bytes, and no traceback in any process's output. The figures are printed.

GRIDMETER_SOAK=1 makes the broker outage minutes long (SOAK_OUTAGE_S) instead of seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.stack import Stack, StackOptions
from testbed.stack_meters import StackMeter

pytestmark = [pytest.mark.system, pytest.mark.slow]

SOAK = os.environ.get("GRIDMETER_SOAK", "") not in ("", "0")
OUTAGE_S = 180.0 if SOAK else 12.0
AGENT_KILLS, GATEWAY_KILLS, BROKER_RESTARTS = 100, 20, 20
METERS = [
    StackMeter("HOUSE-1", "eastron-sdm630", "tcp", 1, "grid", 18_000, 1_000_000, 500_000),
    StackMeter("PV-2", "eastron-sdm630", "tcp", 2, "production", -15_000, 0, 2_000_000),
    StackMeter("SHOP-3", "eastron-sdm120", "tcp", 3, "consumption", 9_000, 300_000, 0),
]
FAULT_OPTS = dict(epoch_s=2, poll_interval_s=0.3, submit_interval_s=0.3, ack_timeout_s=3.0, flush_interval_ms=100,
                  min_read_spacing_ms=100, agent_reconnect_s=(0.1, 0.5), gateway_verify_workers=1)
SETTLE_S = 240.0  # generous: after 100 restarts the agent may hold a backlog; the wait ends as soon as it settles
LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"


def committed(stack: Stack) -> int:
    """Seqs the agent's store has committed, all meters (read-only, like a monitoring tool)."""
    if not stack.agent_db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{stack.agent_db}?mode=ro", uri=True, timeout=10)) as db:
            return int(db.execute("SELECT COALESCE(SUM(next_seq - 1), 0) FROM seqs").fetchone()[0])
    except sqlite3.Error:
        return 0


def finish(stack: Stack, what: str) -> dict[str, Any]:
    """Stop the meters, settle, report; stop the chain so its history (failed transactions) is on disk."""
    t0 = time.monotonic()
    waited = stack.settle(SETTLE_S)
    expected = stack.expected()
    report = stack.report()
    stack.stop("chain")
    report["failed_transactions"] = stack.failed_transactions()
    report["tracebacks"] = stack.tracebacks()
    print(f"\n{what}: settled in {waited:.1f} s ({time.monotonic() - t0:.1f} s with the report)")
    for mid, m in report["meters"].items():
        reg, chain = m["registers"], m["on_chain"]
        print(f"  {mid:8} registers moved +{reg['moved_import_wh']} Wh import / +{reg['moved_export_wh']} Wh export;"
              f" on chain produced {chain['produced_wh']} Wh, consumed {chain['consumed_wh']} Wh in "
              f"{chain['submissions']} submissions (expected {expected[mid]}); readings {m['readings']}")
    print(f"  kills: agent {report['agent_kills']}, gateway {report['gateway_kills']}; broker restarts "
          f"{report['broker_restarts']}; failed transactions {report['failed_transactions']}; duplicate "
          f"submissions {sum(m['duplicate_submissions'] for m in report['meters'].values())}; outbox "
          f"{report['outbox']}; tracebacks {report['tracebacks']}")
    # the whole movement is on chain (nothing left open), exactly, and nothing twice
    for mid, m in report["meters"].items():
        chain = m["on_chain"]
        assert (chain["produced_wh"], chain["consumed_wh"]) == expected[mid], (mid, m, expected[mid])
        assert m["open_interval"] == {"import_wh": 0, "export_wh": 0}, (mid, m)
        assert m["duplicate_submissions"] == 0, (mid, m)
        assert m["readings"]["accepted"] > 0, (mid, m)
    assert sum(sum(e) for e in expected.values()) > 0, expected
    assert report["energy_conserved"] is True, json.dumps(report, indent=1)
    assert report["failed_transactions"] == 0, report
    assert report["publish_conflicts"] == [], report["publish_conflicts"][:10]
    assert not any(report["tracebacks"].values()), {n: stack.log_tail(n) for n, c in report["tracebacks"].items() if c}
    return report


@pytest.fixture
def stack_dir(tmp_path: Path) -> Path:
    return tmp_path / "stack"


def test_kills_of_agent_and_gateway_and_broker_restarts_conserve_energy(stack_dir: Path) -> None:
    rng = random.Random(8_100)
    stack = Stack(stack_dir, METERS, StackOptions(**FAULT_OPTS), say=print)  # type: ignore[arg-type]
    t_start = time.monotonic()
    try:
        stack.start()
        stack.wait(stack.all_baselined, 120, "a baseline reading of every meter", alive=("agent", "gateway"))
        progress: list[int] = []
        for i in range(AGENT_KILLS):
            before = committed(stack)
            if not stack.alive("agent"):
                stack.start_agent()
            if i % 4 == 3:  # let it get to work (reading, committing, publishing), then kill it mid-flight
                stack.wait(lambda b=before: committed(stack) > b, 60, "an agent commit", alive=("agent",))  # type: ignore[misc]
                time.sleep(rng.uniform(0.0, 0.8))
            else:  # anywhere from start-up (opening the store, connecting) to work
                time.sleep(rng.uniform(0.05, 0.8))
            stack.kill_agent()
            progress.append(committed(stack) - before)
            if i % (AGENT_KILLS // GATEWAY_KILLS) == 1:  # killed anywhere from start-up to work, like the agent
                stack.kill("gateway")
                stack.start_gateway(wait=False)
            if i % (AGENT_KILLS // BROKER_RESTARTS) == 3:
                stack.restart_broker()
        kills_s = time.monotonic() - t_start
        stack.start_agent()
        stack.wait(lambda: stack.agent_health().get("mqtt", {}).get("connected") is True, 60, "agent connected",
                   alive=("agent", "gateway"))
        stack.wait(lambda: bool(stack.gw_query("SELECT 1 FROM progress WHERE last_seen_ms > ?",
                                               time.time_ns() // 1_000_000 - 2000)), 60, "the gateway at work",
                   alive=("agent", "gateway"))
        # a broker outage: the agent keeps reading and committing; everything drains afterwards
        stack.wait(lambda: stack.agent_health().get("mqtt", {}).get("connected") is True, 60, "agent connected",
                   alive=("agent",))
        assert stack.broker is not None
        stack.broker.stop()
        at_stop = committed(stack)
        time.sleep(OUTAGE_S)
        buffered = committed(stack) - at_stop
        stack.broker.start()
        stack.broker_restarts += 1
        assert buffered > 0, "the agent committed nothing while the broker was away"
        report = finish(stack, f"{AGENT_KILLS} agent kills, {GATEWAY_KILLS} gateway kills, "
                               f"{BROKER_RESTARTS + 1} broker restarts, a {OUTAGE_S:.0f} s broker outage")
        print(f"  per-kill committed readings {progress}; committed during the outage {buffered}; kill phase "
              f"{kills_s:.0f} s, total {time.monotonic() - t_start:.0f} s")
        assert report["agent_kills"] >= AGENT_KILLS and report["gateway_kills"] >= GATEWAY_KILLS
        assert report["broker_restarts"] >= BROKER_RESTARTS
        assert all(p > 0 for p in progress[3::4]), progress
    finally:
        stack.close()


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """A small tmpfs for the agent's state: a real ENOSPC (SQLITE_FULL) when it is filled. Needs root (CI and
    these machines run as root); elsewhere the test fails saying so rather than faking the error."""
    path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        pytest.fail(f"cannot mount a {size} tmpfs at {path} (needs root): {out.stderr.strip()}")
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path) -> int:
    """Write a filler file until the filesystem is full (ENOSPC); returns its size."""
    fd = os.open(path / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    n = 0
    try:
        while True:
            n += os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == 28, exc  # ENOSPC
    finally:
        os.close(fd)
    return n


def test_disk_full_then_freed_and_clock_jumps_conserve_energy(stack_dir: Path, tmp_path: Path) -> None:
    """Disk full: the agent's state directory on a 16 MiB tmpfs, filled to ENOSPC while the broker is away (so the
    store must grow: a real SQLITE_FULL), freed later. Clock: the agent restarted under libfaketime (Debian's
    faketime), real monotonic clock, wall-clock offset read from a control file at every call: back 20 s, forward
    again, forward 20 s, back. (No broker outage under libfaketime: its clock_nanosleep breaks Python's
    time.sleep, which paho's reconnect wait uses.)"""
    assert Path(LIBFAKETIME).exists(), "libfaketime missing: scripts/bootstrap installs Debian's faketime"
    ctl = tmp_path / "faketime"
    ctl.write_text("+0s\n")
    faketime = {"LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": str(ctl), "FAKETIME_NO_CACHE": "1",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    t_start = time.monotonic()
    with tiny_tmpfs(tmp_path / "agent-state", "16m") as state:
        opts = StackOptions(**FAULT_OPTS, agent_state_dir=state)  # type: ignore[arg-type]
        stack = Stack(stack_dir, METERS, opts, say=print)
        try:
            stack.start()
            stack.wait(stack.all_baselined, 120, "a baseline reading of every meter", alive=("agent", "gateway"))
            # --- disk full while the broker is away, then freed
            assert stack.broker is not None
            stack.broker.stop()
            filler = fill(state)
            stack.wait(lambda: bool(stack.agent_health().get("queue", {}).get("commit_error")), 120,
                       "the agent to report a failed commit (disk full)", alive=("agent",))
            health = stack.agent_health()
            commit_error = health["queue"]["commit_error"]
            pending = health["queue"]["pending_commit"]
            stack.wait(lambda: stack.agent_health().get("queue", {}).get("pending_commit", 0) > pending + 10, 60,
                       "readings to keep coming while nothing can be committed", alive=("agent",))
            (state / "filler").unlink()
            stack.wait(lambda: not stack.agent_health().get("queue", {}).get("commit_error"), 60,
                       "commits to work again", alive=("agent",))
            stack.broker.start()
            stack.broker_restarts += 1
            full_s = time.monotonic() - t_start
            # --- wall clock jumps (the agent only): back, forward, forward, back
            assert stack.stop("agent") == 0, stack.log_tail("agent")
            opts.agent_env = faketime
            stack.start_agent()
            jumps = 0
            for offset in ("-20s", "+0s", "+20s", "+0s"):
                before = committed(stack)
                ctl.write_text(offset + "\n")
                jumps += 1
                stack.wait(lambda b=before: committed(stack) > b + 10, 60, f"readings after the jump to {offset}",  # type: ignore[misc]
                           alive=("agent",))
            h = stack.agent_health()
            assert h["clock"]["jumps"] >= 3, h["clock"]
            report = finish(stack, "disk full then freed, wall clock jumped back and forward")
            held = sum(m["readings"]["held"] for m in report["meters"].values())
            rejected = sum(m["readings"]["rejected"] for m in report["meters"].values())
            reasons = dict(stack.gw_query("SELECT reason, COUNT(*) FROM rejections GROUP BY reason"))
            print(f"  disk full: filler {filler} bytes, agent said {commit_error!r}; {full_s:.0f} s")
            print(f"  clock: {jumps} jumps, agent detected {h['clock']['jumps']}; gateway held {held} readings "
                  f"(CLOCK_JUMPED), rejected {rejected} ({reasons}); total {time.monotonic() - t_start:.0f} s")
            assert "full" in commit_error.lower(), commit_error
        finally:
            stack.close()
