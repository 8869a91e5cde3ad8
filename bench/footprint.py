"""`python -m bench footprint --json`: what a household costs the Pi: SD-card writes, memory, CPU.

The household load of the issue: 4 simulated meters (Modbus TCP, live counters) x 1 reading/s, read by a real
`gridmeter agent run` process with the DEFAULT config (only poll_interval_s = 1 and the paths set), published
through a real mosquitto to a real `gridmeter gateway run` (default limits) that verifies, acks and submits to
the local chain (`gridmeter chain serve`). After a warm-up, for --duration-s (default 600 s: the reported
figure must come from at least 10 minutes) it samples every 5 s:

- write_bytes from /proc/PID/io (bytes the process caused to be written to storage: the WAL, checkpoints into
  the database file, ack deletions, the -shm index; the gateway's figure sums its process tree),
- RSS (VmRSS) and CPU time (utime + stime),
- readings: the agent's stored count from its /health, the gateway's received count from its /metrics.

Figures: bytes_written_per_reading = write_bytes delta / readings delta; cpu_share = CPU seconds / wall seconds
(share of one core); rss_mb = the largest RSS seen; rss_slope_mb_per_min = least-squares slope of RSS over the
run. Budget (issue 13): <= 2 KiB per reading, RSS < 60 MB, < 3% of one core. The state directory must be on a
real file system (write_bytes of tmpfs is always 0): --workdir, default under /var/tmp.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_DURATION_S = 600.0
MIN_REPORTED_DURATION_S = 600.0  # the budget is judged over >= 10 minutes
DEFAULT_WARMUP_S = 30.0
SAMPLE_EVERY_S = 5.0
METERS = 4
POLL_INTERVAL_S = 1.0
BUDGET_BYTES_PER_READING = 2048
BUDGET_RSS_MB = 60.0
BUDGET_CPU_SHARE = 0.03
DASHBOARD_TOKEN = "bench-footprint-token"
_TICK = os.sysconf("SC_CLK_TCK")


def _seconds(lo: float, hi: float) -> Any:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            v = lo - 1
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be a number of seconds in {lo:g}..{hi:g} (got {text!r})")
        return v
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration-s", type=_seconds(10, 86_400), default=DEFAULT_DURATION_S,
                   help=f"measured time after warm-up (default {DEFAULT_DURATION_S:g}; the budget is judged only "
                        f"for >= {MIN_REPORTED_DURATION_S:g})")
    p.add_argument("--warmup-s", type=_seconds(5, 3600), default=DEFAULT_WARMUP_S)
    p.add_argument("--workdir", type=Path, default=None,
                   help="state directories go here (must not be tmpfs); default a new directory under /var/tmp")
    p.add_argument("--agent-config", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one agent config value (TOML literal), e.g. store.flush_interval_ms=1000")


# ---- /proc sampling -----------------------------------------------------------------------------------------

def _children(pid: int) -> list[int]:
    out: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    return out


def _tree(pid: int) -> list[int]:
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo += _children(p)
    return seen


@dataclass
class Sample:
    t: float
    write_bytes: int
    cpu_s: float
    rss_kb: int


def sample(pid: int, *, tree: bool = False) -> Sample:
    write = rss = 0
    cpu = 0.0
    for p in _tree(pid) if tree else [pid]:
        try:
            with open(f"/proc/{p}/io") as f:
                write += next(int(line.split()[1]) for line in f if line.startswith("write_bytes:"))
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15 of stat(5))
            with open(f"/proc/{p}/status") as f:
                rss += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
        except (OSError, StopIteration):
            continue  # a worker that just exited
    return Sample(time.monotonic(), write, cpu, rss)


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) in value per minute; 0 for fewer than 2 points."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if den == 0 else 60 * sum((t - mt) * (v - mv) for t, v in points) / den


def _get(url: str, token: str | None = None) -> bytes:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=10) as resp:
        body: bytes = resp.read(8 * 1024 * 1024)
        return body


def agent_readings(status_port: int) -> int:
    h = json.loads(_get(f"http://127.0.0.1:{status_port}/health"))
    return sum(int(d.get("stored", 0)) for d in h["devices"].values())


def gateway_counts(dash_port: int) -> dict[str, float]:
    """received / accepted / rejected-by-reason from the gateway's Prometheus text."""
    out: dict[str, float] = {}
    for line in _get(f"http://127.0.0.1:{dash_port}/metrics", DASHBOARD_TOKEN).decode().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, value = line.rpartition(" ")
        for key, prefix in (("received", "gridmeter_gateway_readings_received_total"),
                            ("accepted", "gridmeter_gateway_readings_accepted_total"),
                            ("rejected", "gridmeter_gateway_readings_rejected_total")):
            if name.startswith(prefix):
                out[key] = out.get(key, 0.0) + float(value)
                if key == "rejected" and 'reason="' in name:
                    reason = name.split('reason="', 1)[1].split('"', 1)[0]
                    out[f"rejected_{reason}"] = out.get(f"rejected_{reason}", 0.0) + float(value)
    return out


# ---- the household rig --------------------------------------------------------------------------------------

@dataclass
class Household:
    work: Path
    agent_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    status_port: int = 0
    dash_port: int = 0

    def __post_init__(self) -> None:
        self.cli = [sys.executable, "-m", "gridmeter.cli"]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bench-meters", daemon=True)
        self._meters: Any = None
        self._broker: Any = None

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.work / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                    env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.work / f"{name}.log").read_text(errors="replace")[-2500:]
                raise RuntimeError(f"{name} exited with {proc.returncode}; last log lines:\n{tail}")

    def start(self) -> None:
        import tomli_w

        from agent.keys import create_key_file, load_key_file
        from firmware_config.loader import load_all
        from gateway.keys import create_key_file as create_gateway_key
        from gateway.oracle.authority_key import create_authority_key_file
        from oracle_interface.layout import DEVNET_PROGRAM_ID
        from protocol import MeterRole, Registration, SigningKey, sign_registration
        from testbed.broker import Broker
        from testbed.meter import SimulatedMeter
        from testbed.ports import free_port, wait_port
        from testbed.tcp import ModbusTcpMeters

        authority = create_authority_key_file(self.work / "chain-bridge.json")
        create_gateway_key(self.work / "gateway.key")
        create_key_file(self.work / "device.key")
        profile = load_all()["eastron-sdm630"]
        sims = [SimulatedMeter(profile, i + 1, import_wh=1_000_000 * (i + 1), export_wh=10_000 * i,
                               power_w=(2_000 + 500 * i) * (-1 if i == 3 else 1), live=True) for i in range(METERS)]
        # One Modbus TCP endpoint (bus) per meter: the SDM630 profile asks for 100 ms between queries, so four of
        # them on one bus need ~1.2 s per cycle and could not be read every second.
        self._meters = [ModbusTcpMeters([sim]) for sim in sims]
        self._thread.start()
        for m in self._meters:
            asyncio.run_coroutine_threadsafe(m.start(), self._loop).result(30)
        self._broker = Broker(workdir=self.work / "broker")
        self._broker.start()
        rpc_port, self.dash_port, self.status_port = free_port(), free_port(), free_port()
        self.spawn("chain", [*self.cli, "chain", "serve", "--port", str(rpc_port), "--chain-bridge",
                             str(authority.pubkey()), "--state", str(self.work / "chain-state.json")])
        wait_port(rpc_port, 60.0)
        gw = {
            "gateway": {"state_dir": str(self.work / "gateway"), "ack_key_file": str(self.work / "gateway.key")},
            "chain": {"rpc_url": f"http://127.0.0.1:{rpc_port}", "program_id": DEVNET_PROGRAM_ID,
                      "authority_key_file": str(self.work / "chain-bridge.json")},
            "mqtt": {"port": self._broker.port, "client_id": "bench-footprint-gateway"},
            "dashboard": {"listen": f"127.0.0.1:{self.dash_port}", "token": DASHBOARD_TOKEN},
        }
        gw_pub = SigningKey(bytes.fromhex((self.work / "gateway.key").read_text().strip())).public_key.hex()
        agent: dict[str, Any] = {
            "agent": {"state_dir": str(self.work / "agent"), "key_file": str(self.work / "device.key"),
                      "poll_interval_s": POLL_INTERVAL_S},
            "clock": {"check": "always-synced"},  # the bench host's NTP state must not change the figures
            "mqtt": {"port": self._broker.port, "client_id": "bench-footprint-agent", "gateway_public_key": gw_pub},
            "status": {"listen": f"127.0.0.1:{self.status_port}"},
            "buses": [{"name": f"tcp-{i}", "kind": "tcp", "host": "127.0.0.1", "tcp_port": m.port}
                      for i, m in enumerate(self._meters)],
            "meters": [{"meter_id": f"HOME-{i + 1}", "bus": f"tcp-{i}", "unit_id": i + 1, "profile": "eastron-sdm630"}
                       for i in range(METERS)],
        }
        for section, values in self.agent_overrides.items():
            agent.setdefault(section, {}).update(values)
        (self.work / "gateway.toml").write_text(tomli_w.dumps(gw))
        (self.work / "agent.toml").write_text(tomli_w.dumps(agent))
        key = load_key_file(self.work / "device.key")
        for i in range(METERS):
            reg = Registration(meter_id=f"HOME-{i + 1}", public_key=key.public_key, profile="eastron-sdm630",
                               serial_number=f"BENCH-{i + 1}", role=MeterRole.GRID, zone_id=1,
                               rated_max_power_w=50_000, installer_id="bench",
                               created_at_ms=time.time_ns() // 1_000_000)
            rec = self.work / f"HOME-{i + 1}.gmreg"
            rec.write_text(sign_registration(reg, key).to_text() + "\n")
            out = subprocess.run([*self.cli, "gateway", "meters", "add", str(rec), "--config",
                                  str(self.work / "gateway.toml")], capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                raise RuntimeError(f"gateway meters add {rec.name} failed: {out.stderr or out.stdout}")
        self.spawn("gateway", [*self.cli, "gateway", "run", "--config", str(self.work / "gateway.toml")])
        wait_port(self.dash_port, 120.0)
        self.spawn("agent", [*self.cli, "agent", "run", "--config", str(self.work / "agent.toml")])
        wait_port(self.status_port, 120.0)

    def stop(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    print(f"bench footprint: {name} did not stop on SIGTERM; killing it", file=sys.stderr)
                    proc.kill()
                    proc.wait(10)
        for m in self._meters or ():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(m.stop(), self._loop).result(30)
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if self._broker is not None:
            self._broker.close()


def _overrides(items: list[str]) -> dict[str, dict[str, Any]]:
    import tomllib

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not section or not name:
            raise SystemExit(f"bench footprint: --agent-config must be SECTION.KEY=VALUE (got {item!r})")
        try:
            out.setdefault(section, {})[name] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError as exc:
            raise SystemExit(f"bench footprint: --agent-config {item!r}: value is not a TOML literal ({exc})") from None
    return out


def _workdir(arg: Path | None) -> tuple[Path, bool]:
    if arg is not None:
        arg.mkdir(parents=True, exist_ok=True)
        return arg, False
    base = Path("/var/tmp") if Path("/var/tmp").is_dir() else None
    return Path(tempfile.mkdtemp(prefix="gridmeter-bench-footprint-", dir=base)), True


def _fs_type(path: Path) -> str:
    best, kind, where = "", "?", str(path.resolve())
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mnt = parts[1]
            inside = where.startswith(mnt.rstrip("/") + "/") or where == mnt
            if inside and len(mnt) > len(best):
                best, kind = mnt, parts[2]
    return kind


def _figures(a0: Sample, a1: Sample, n: int, rss: list[tuple[float, float]]) -> dict[str, Any]:
    wall = a1.t - a0.t
    return {
        "readings": n,
        "write_bytes": a1.write_bytes - a0.write_bytes,
        "bytes_written_per_reading": round((a1.write_bytes - a0.write_bytes) / n, 1) if n else None,
        "cpu_share": round((a1.cpu_s - a0.cpu_s) / wall, 4),
        "rss_mb": round(max(v for _, v in rss), 1),
        "rss_end_mb": round(rss[-1][1], 1),
        "rss_slope_mb_per_min": round(slope_per_min(rss), 4),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    duration = getattr(args, "duration_s", DEFAULT_DURATION_S)
    warmup = getattr(args, "warmup_s", DEFAULT_WARMUP_S)
    work, owned = _workdir(getattr(args, "workdir", None))
    fs = _fs_type(work)
    if fs in ("tmpfs", "ramfs"):
        raise SystemExit(f"bench footprint: {work} is on {fs}: write_bytes would read 0; pass --workdir on a disk")
    rig = Household(work, _overrides(getattr(args, "agent_config", [])))
    try:
        rig.start()
        agent_pid, gw_pid = rig.procs["agent"].pid, rig.procs["gateway"].pid
        deadline = time.monotonic() + warmup
        while time.monotonic() < deadline:
            time.sleep(1)
            rig.check_alive()
        a0, g0 = sample(agent_pid), sample(gw_pid, tree=True)
        n0, gc0 = agent_readings(rig.status_port), gateway_counts(rig.dash_port)
        rss_a: list[tuple[float, float]] = [(a0.t, a0.rss_kb / 1024)]
        rss_g: list[tuple[float, float]] = [(g0.t, g0.rss_kb / 1024)]
        end = time.monotonic() + duration
        while time.monotonic() < end:
            time.sleep(min(SAMPLE_EVERY_S, max(0.0, end - time.monotonic())))
            rig.check_alive()
            sa, sg = sample(agent_pid), sample(gw_pid, tree=True)
            rss_a.append((sa.t, sa.rss_kb / 1024))
            rss_g.append((sg.t, sg.rss_kb / 1024))
        a1, g1 = sample(agent_pid), sample(gw_pid, tree=True)
        n1, gc1 = agent_readings(rig.status_port), gateway_counts(rig.dash_port)
        health = json.loads(_get(f"http://127.0.0.1:{rig.status_port}/health"))
    finally:
        rig.stop()
        if owned:
            shutil.rmtree(work, ignore_errors=True)
    agent = _figures(a0, a1, n1 - n0, rss_a)
    received = int(gc1.get("received", 0) - gc0.get("received", 0))
    gateway = _figures(g0, g1, received, rss_g)
    rejected = {k[len("rejected_"):]: int(v - gc0.get(k, 0)) for k, v in gc1.items() if k.startswith("rejected_")}
    long_enough = duration >= MIN_REPORTED_DURATION_S
    meets = (agent["bytes_written_per_reading"] is not None
             and agent["bytes_written_per_reading"] <= BUDGET_BYTES_PER_READING
             and agent["rss_mb"] < BUDGET_RSS_MB and agent["cpu_share"] < BUDGET_CPU_SHARE)
    return {
        "bench": "footprint",
        "meters": METERS, "poll_interval_s": POLL_INTERVAL_S, "seconds": round(a1.t - a0.t, 1),
        "filesystem": fs, "agent_config_overrides": getattr(args, "agent_config", []),
        **agent,
        "budget_bytes_written_per_reading": BUDGET_BYTES_PER_READING, "budget_rss_mb": BUDGET_RSS_MB,
        "budget_cpu_share": BUDGET_CPU_SHARE,
        "meets_budget": meets and long_enough,
        "long_enough": long_enough,  # the budget is judged over >= 10 minutes only
        "agent_queue_depth_end": health["queue"]["depth"],
        "gateway": {**gateway, "accepted": int(gc1.get("accepted", 0) - gc0.get("accepted", 0)),
                    "rejected_by_reason": {k: v for k, v in rejected.items() if v}},
    }
