"""The whole chain on one machine, every part a real process except the simulated meters:

    simulated meters (virtual RS-485 via socat, and/or Modbus TCP; their own event loop in a thread here, so they
    keep counting while the processes below are killed)
      -> `gridmeter agent run`    (process: reads, signs, commits to SQLite, publishes)
      -> mosquitto                (process, persistence on)
      -> `gridmeter gateway run`  (process: verifies, checks, commits, acks, submits)
      -> `gridmeter chain serve`  (process: LiteSVM + the oracle program behind JSON-RPC)

Used by `gridmeter demo` and by the fault suite (tests/fault): start, kill and restart any process, then
`settle()` (meters stop counting, everything drains) and `report()`: per meter the register movement, the
on-chain MeterState totals, the readings read / published / acked / accepted / rejected, and whether energy was
conserved (on-chain totals == register movement of the closed intervals, exactly, in integer Wh).

What lives where: this module starts, kills and watches the processes (Stack, StackOptions); the meters and their
servers are in testbed.stack_meters, the processes' config files in testbed.stack_config, settle and the report in
testbed.stack_report.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed import stack_report
from testbed.broker import Broker
from testbed.ports import free_port, wait_port
from testbed.stack_config import write_configs
from testbed.stack_meters import ROLES, MeterServers, StackMeter


@dataclass
class StackOptions:
    epoch_s: int = 10  # market epoch of the gateway and the chain's min_reading_interval
    poll_interval_s: float = 2.0
    submit_interval_s: float = 1.0
    ack_timeout_s: float = 10.0
    flush_interval_ms: int = 200
    min_read_spacing_ms: int = 1000
    agent_state_dir: Path | None = None  # default: <work>/agent
    agent_env: dict[str, str] = field(default_factory=dict)  # e.g. LD_PRELOAD of libfaketime
    agent_reconnect_s: tuple[float, float] = (1.0, 60.0)  # the agent's MQTT reconnect backoff (min, max)
    store_max_readings: int = 100_000
    rtu_timeout_s: float = 1.0
    gateway_verify_workers: int = 0  # 0 = one per core


class StackError(RuntimeError):
    pass


class Stack:
    """Start with `start()`, end with `close()` (also a context manager). Logs go to <work>/<name>.log."""

    def __init__(self, work: Path, meters: list[StackMeter], opts: StackOptions | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        self.work, self.meters, self.opts = Path(work), list(meters), opts or StackOptions()
        self.say = say or (lambda _s: None)
        self.cli = [sys.executable, "-m", "gridmeter.cli"]
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.starts: dict[str, int] = {}
        self.kills: dict[str, int] = {"agent": 0, "gateway": 0}
        self.broker_restarts = 0
        self.sims: dict[str, Any] = {}
        self.broker: Broker | None = None
        self.servers: MeterServers | None = None
        self.rpc_port = self.dash_port = self.status_port = 0
        self._spy: Any = None
        self._spy_lock = threading.Lock()
        self.published: dict[str, dict[int, bytes]] = {m.meter_id: {} for m in meters}  # seq -> payload
        self.publish_conflicts: list[str] = []  # same (meter, seq) seen with different bytes: must stay empty
        self.acked: dict[str, int] = {m.meter_id: 0 for m in meters}
        self.agent_reads_before_restarts: dict[str, int] = {m.meter_id: 0 for m in meters}
        self._last_health: dict[str, Any] = {}

    # ---- paths ------------------------------------------------------------------------------------------
    @property
    def gateway_db(self) -> Path:
        return self.work / "gateway" / "gateway.sqlite"

    @property
    def agent_state(self) -> Path:
        return self.opts.agent_state_dir or self.work / "agent"

    @property
    def agent_db(self) -> Path:
        return self.agent_state / "agent.sqlite"

    @property
    def chain_state_file(self) -> Path:
        return self.work / "chain-state.json"

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    # ---- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> Stack:
        from agent.keys import create_key_file
        from firmware_config.loader import load_all
        from gateway.keys import create_key_file as create_gateway_key
        from gateway.oracle.authority_key import create_authority_key_file
        from testbed.meter import SimulatedMeter
        from testbed.rtu import VirtualRtuBus
        from testbed.tcp import ModbusTcpMeters

        self.work.mkdir(parents=True, exist_ok=True)
        self.authority = create_authority_key_file(self.work / "chain-bridge.json")
        self.gateway_key = create_gateway_key(self.work / "gateway.key")
        create_key_file(self.work / "device.key")
        profiles = load_all()
        self.sims = {m.meter_id: SimulatedMeter(profiles[m.profile], m.unit_id, import_wh=m.import_wh,
                                                export_wh=m.export_wh, power_w=m.power_w, live=True)
                     for m in self.meters}
        servers: list[Any] = []
        rtu_meters = [self.sims[m.meter_id] for m in self.meters if m.link == "rtu"]
        tcp_meters = [self.sims[m.meter_id] for m in self.meters if m.link == "tcp"]
        self.rtu = VirtualRtuBus(rtu_meters, 9600, "N", 1, workdir=self.work / "rtu") if rtu_meters else None
        self.tcp = ModbusTcpMeters(tcp_meters) if tcp_meters else None
        servers += [s for s in (self.rtu, self.tcp) if s is not None]
        self.servers = MeterServers(servers)
        self.servers.start()
        self.broker = Broker(workdir=self.work / "broker")
        self.broker.start()
        self.rpc_port, self.dash_port, self.status_port = self._ports(3)
        self.start_chain()
        write_configs(self)
        self._register_meters()
        self.start_gateway()
        self._start_spy()
        self.start_agent()
        return self

    def _ports(self, n: int) -> list[int]:
        taken = {self.broker.port if self.broker else 0, self.tcp.port if self.tcp else 0}
        out: list[int] = []
        while len(out) < n:
            p = free_port()
            if p not in taken and p not in out:  # free_port can hand out a port twice
                out.append(p)
        return out

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        n = self.starts.get(name, 0)
        self.starts[name] = n + 1
        with open(self.work / f"{name}.log", "ab") as log:
            log.write(f"\n==== {name} start {n} at {time.strftime('%H:%M:%S')} ====\n".encode())
            full_env = dict(os.environ, PYTHONUNBUFFERED="1")
            full_env.pop("NOTIFY_SOCKET", None)
            full_env.update(env or {})
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        self.procs[name] = proc
        return proc

    def alive(self, name: str) -> bool:
        p = self.procs.get(name)
        return p is not None and p.poll() is None

    def check_alive(self, *names: str) -> None:
        for name in names or tuple(self.procs):
            p = self.procs.get(name)
            if p is not None and p.poll() is not None:
                raise StackError(f"{name} exited with {p.returncode}; last log lines:\n{self.log_tail(name)}")

    def log_tail(self, name: str, n: int = 3000) -> str:
        path = self.work / f"{name}.log"
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def tracebacks(self) -> dict[str, int]:
        """'Traceback' lines per process log: an unhandled exception anywhere (must be 0)."""
        return {name: (self.work / f"{name}.log").read_text(errors="replace").count("Traceback")
                for name in self.starts if (self.work / f"{name}.log").exists()}

    def kill(self, name: str) -> None:
        """SIGKILL the process and everything it started (its session: the gateway's verify workers), as
        systemd's KillMode=control-group would."""
        p = self.procs.get(name)
        if p is not None and p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(30)
            if name in self.kills:
                self.kills[name] += 1

    def stop(self, name: str, timeout_s: float = 30.0) -> int | None:
        p = self.procs.get(name)
        if p is None:
            return None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.say(f"{name} did not stop on SIGTERM within {timeout_s:.0f} s; killing it")
                p.kill()
                p.wait(10)
                return None
        return p.returncode

    def start_chain(self) -> None:
        self._spawn("chain", [*self.cli, "chain", "serve", "--port", str(self.rpc_port), "--chain-bridge",
                              str(self.authority.pubkey()), "--min-reading-interval", str(self.opts.epoch_s),
                              "--state", str(self.chain_state_file)])
        self._wait_port("chain", self.rpc_port)

    def start_gateway(self, *, wait: bool = True) -> None:
        self._spawn("gateway", [*self.cli, "gateway", "run", "--config", str(self.work / "gateway.toml")])
        if wait:
            self._wait_port("gateway", self.dash_port)

    def start_agent(self) -> None:
        if "agent" in self.procs:
            self._remember_reads()
        self._spawn("agent", [*self.cli, "agent", "run", "--config", str(self.work / "agent.toml")],
                    self.opts.agent_env)

    def kill_agent(self) -> None:
        self._remember_reads()
        self.kill("agent")

    def _remember_reads(self) -> None:
        """Keep the read counts of an agent about to die (its /health counters start at 0 again)."""
        h = self.agent_health()
        if h:
            self._last_health = h
        for m, dev in self._last_health.get("devices", {}).items():
            if m in self.agent_reads_before_restarts:
                self.agent_reads_before_restarts[m] += int(dev.get("reads", 0))
        self._last_health = {}

    def restart_broker(self) -> None:
        assert self.broker is not None
        self.broker.restart()
        self.broker_restarts += 1

    def _wait_port(self, name: str, port: int, timeout_s: float = 120.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive(name)
            try:
                wait_port(port, 1.0)
                return
            except TimeoutError:
                if time.monotonic() > deadline:
                    raise StackError(f"{name}: nothing listening on {port} after {timeout_s:.0f} s\n"
                                     f"{self.log_tail(name)}") from None

    def close(self) -> None:
        if self._spy is not None:
            with contextlib.suppress(Exception):
                self._spy.loop_stop()
                self._spy.disconnect()
            self._spy = None
        for name in ("agent", "gateway", "chain"):
            with contextlib.suppress(Exception):
                self.stop(name)
        if self.servers is not None:
            self.servers.stop()
            self.servers = None
        if self.broker is not None:
            self.broker.close()
            self.broker = None

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- registration (the config files: testbed.stack_config) ----------------------------------------
    def _register_meters(self) -> None:
        """Registration records signed by the device key, added with `gateway meters add` as an installer does."""
        from agent.keys import load_key_file
        from protocol import MeterRole, Registration, sign_registration

        key = load_key_file(self.work / "device.key")
        for m in self.meters:
            reg = Registration(meter_id=m.meter_id, public_key=key.public_key, profile=m.profile,
                               serial_number=f"STACK-{m.unit_id:03d}-{m.link}", role=MeterRole(ROLES[m.role]),
                               zone_id=1, rated_max_power_w=50_000, installer_id="stack",
                               created_at_ms=time.time_ns() // 1_000_000)
            rec = self.work / f"{m.meter_id}.gmreg"
            rec.write_text(sign_registration(reg, key).to_text() + "\n")
            out = subprocess.run([*self.cli, "gateway", "meters", "add", str(rec), "--config",
                                  str(self.work / "gateway.toml")], capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                raise StackError(f"gateway meters add {rec.name} failed: {out.stderr or out.stdout}")
            self.say(f"registered {m.meter_id:9} ({m.profile}, {m.role}, {m.link}) at the gateway")

    # ---- observation -------------------------------------------------------------------------------------
    def _start_spy(self) -> None:
        """Watch the broker like a fleet monitor (testbed.broker_monitor)."""
        from protocol import VerifyKey
        from testbed.broker_monitor import start_monitor

        assert self.broker is not None
        self._spy = start_monitor(self.broker.port, VerifyKey(self.gateway_key.public_key), self._spy_lock,
                                  self.acked, self.published, self.publish_conflicts)

    def agent_health(self) -> dict[str, Any]:
        import urllib.request

        if not self.alive("agent"):
            return {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.status_port}/health", timeout=5) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    def gw_query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        if not self.gateway_db.exists():
            return []
        conn = sqlite3.connect(f"file:{self.gateway_db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError:
            return []  # tables not created yet
        finally:
            conn.close()

    def chain_states(self) -> dict[str, Any]:
        """MeterState accounts read over JSON-RPC (None for a meter with nothing on chain)."""
        from gateway.oracle import OracleClient
        from oracle_interface.layout import DEVNET_PROGRAM_ID

        async def fetch() -> dict[str, Any]:
            client = OracleClient(self.rpc_url, DEVNET_PROGRAM_ID, self.authority)
            try:
                return await client.fetch_meter_states([m.meter_id for m in self.meters])
            finally:
                await client.close()

        return asyncio.run(fetch())

    def chain_totals(self) -> dict[str, tuple[int, int, int]]:
        """meter -> (produced Wh, consumed Wh, submissions) on chain."""
        out = {}
        for m, st in self.chain_states().items():
            out[m] = (0, 0, 0) if st is None else (st.total_energy_produced, st.total_energy_consumed,
                                                    st.total_readings)
        return out

    def baselines(self) -> dict[str, tuple[int, int, int]]:
        """meter -> (seq, import Wh, export Wh) of its first accepted reading: the gateway's baseline."""
        rows = self.gw_query("SELECT r.meter_id, r.seq, r.import_wh, r.export_wh FROM readings r JOIN "
                             "(SELECT meter_id, MIN(seq) AS s FROM readings WHERE status = 'accepted' "
                             "GROUP BY meter_id) f ON f.meter_id = r.meter_id AND f.s = r.seq")
        return {m: (s, i, e) for m, s, i, e in rows}

    def wait(self, cond: Callable[[], bool], timeout_s: float, what: str, *, alive: tuple[str, ...] = (),
             poll_s: float = 0.2) -> None:
        deadline = time.monotonic() + timeout_s
        while not cond():
            self.check_alive(*alive) if alive else None
            if time.monotonic() > deadline:
                raise StackError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            time.sleep(poll_s)

    def all_baselined(self) -> bool:
        return set(self.baselines()) >= {m.meter_id for m in self.meters}

    # ---- the end: settle and report (testbed.stack_report) -----------------------------------------------
    def register_values(self, meter_id: str) -> tuple[int, int]:
        return stack_report.register_values(self, meter_id)

    def expected(self) -> dict[str, tuple[int, int]]:
        return stack_report.expected(self)

    def settle(self, timeout_s: float) -> float:
        return stack_report.settle(self, timeout_s)

    def failed_transactions(self) -> int | None:
        return stack_report.failed_transactions(self)

    def report(self) -> dict[str, Any]:
        return stack_report.report(self)
