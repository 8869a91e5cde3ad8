"""`gridmeter demo`: the whole chain on one machine, on embedded defaults, with nothing faked in between.

    simulated meters (3 on a virtual RS-485 bus via socat, 1 over Modbus TCP)
      -> `gridmeter agent run`    (real process: reads, signs, stores, publishes)
      -> mosquitto                (real broker on a free port)
      -> `gridmeter gateway run`  (real process: verifies, checks, acks, submits)
      -> `gridmeter chain serve`  (real Solana VM executing the oracle-compatible program, JSON-RPC)

It prints what the agent publishes (decoded from the signed MQTT messages), what the gateway accepted (its
dashboard API), and what the chain holds (MeterState accounts read over JSON-RPC), then a summary comparing the
meters' register movement with the on-chain totals.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEMO_INTERVAL_S = 10  # market epoch and chain min_reading_interval for the demo (production: 900 s / 60 s)
DEFAULT_DURATION_S = 75
DASHBOARD_TOKEN = "demo-dashboard-token"
STATUS_EVERY_S = 5.0


@dataclass(frozen=True)
class DemoMeter:
    meter_id: str
    profile: str
    link: str  # "rtu" | "tcp"
    unit_id: int
    role: str  # grid | production | consumption
    power_w: int  # + imports, - exports
    import_wh: int
    export_wh: int


METERS = (
    DemoMeter("HOUSE-1", "eastron-sdm630", "rtu", 1, "grid", 4_200, 1_234_567, 89_012),
    DemoMeter("FLAT-2", "eastron-sdm120", "rtu", 2, "consumption", 1_800, 456_789, 0),
    DemoMeter("SHOP-3", "carlogavazzi-em340", "rtu", 3, "consumption", 7_500, 2_345_600, 0),
    DemoMeter("PV-4", "eastron-sdm630", "tcp", 1, "production", -5_400, 0, 3_210_987),
)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run simulated meters -> agent -> broker -> gateway -> local chain",
        description="Run the whole chain locally on embedded defaults and print what flows through it. Needs "
        "mosquitto and socat (scripts/demo installs them).",
    )
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S,
                   help=f"seconds to run before the summary (default {DEFAULT_DURATION_S}; 0 = until Ctrl-C)")
    p.add_argument("--workdir", default=None,
                   help="keep keys, configs, databases and logs here (default: a temporary directory, removed)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.duration < 0:
        print("gridmeter demo: --duration must be >= 0", file=sys.stderr)
        return 2
    for tool in ("mosquitto", "socat"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            print(f"gridmeter demo: {tool} is not installed; run scripts/demo (it installs it)", file=sys.stderr)
            return 1
    for name in ("httpx", "httpx2"):  # solana-py logs every RPC call at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    keep = args.workdir is not None
    work = Path(args.workdir) if keep else Path(tempfile.mkdtemp(prefix="gridmeter-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return asyncio.run(Demo(work, args.duration).run())
    except KeyboardInterrupt:
        return 130
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def _say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


class Demo:
    def __init__(self, work: Path, duration_s: float) -> None:
        self.work, self.duration_s = work, duration_s
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.published: dict[str, tuple[int, int, int, int]] = {}  # meter -> (seq, read_at, import, export)
        self.first: dict[str, tuple[int, int, int, int]] = {}  # the first reading seen: the gateway's baseline
        self.cli = [sys.executable, "-m", "gridmeter.cli"]

    # ---- setup --------------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.work / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.work / f"{name}.log").read_text(errors="replace")[-2500:]
                raise RuntimeError(f"{name} exited with {proc.returncode}; last log lines:\n{tail}")

    def _write_configs(self, broker_port: int, rpc_url: str, rtu_port: str, tcp_port: int,
                       dash_port: int) -> tuple[Path, Path]:
        import tomli_w

        from gateway.oracle_layout import DEVNET_PROGRAM_ID  # the local chain's default; gateway uses the same

        gw = {
            "gateway": {"state_dir": str(self.work / "gateway"), "ack_key_file": str(self.work / "gateway.key")},
            "chain": {"rpc_url": rpc_url, "program_id": DEVNET_PROGRAM_ID,
                      "authority_key_file": str(self.work / "chain-bridge.json"),
                      "submit_interval_s": 1.0},
            "mqtt": {"port": broker_port, "client_id": "gridmeter-demo-gateway"},
            "dashboard": {"listen": f"127.0.0.1:{dash_port}", "token": DASHBOARD_TOKEN},
            "intervals": {"epoch_s": DEMO_INTERVAL_S},
        }
        from protocol import SigningKey

        gw_pub = SigningKey(bytes.fromhex((self.work / "gateway.key").read_text().strip())).public_key.hex()
        agent: dict[str, Any] = {
            "agent": {"state_dir": str(self.work / "agent"), "key_file": str(self.work / "device.key"),
                      "poll_interval_s": 2},
            "clock": {"check": "always-synced"},  # a demo box may not run NTP; production uses "auto"
            "mqtt": {"port": broker_port, "client_id": "gridmeter-demo-agent", "gateway_public_key": gw_pub,
                     "ack_timeout_s": 10},
            "store": {"flush_interval_ms": 200},
            "status": {"listen": ""},
            "buses": [
                {"name": "rs485-0", "kind": "rtu", "port": rtu_port, "baudrate": 9600, "parity": "N", "stopbits": 1},
                {"name": "tcp-0", "kind": "tcp", "host": "127.0.0.1", "tcp_port": tcp_port},
            ],
            "meters": [{"meter_id": m.meter_id, "bus": "rs485-0" if m.link == "rtu" else "tcp-0",
                        "unit_id": m.unit_id, "profile": m.profile} for m in METERS],
        }
        gw_path, agent_path = self.work / "gateway.toml", self.work / "agent.toml"
        gw_path.write_text(tomli_w.dumps(gw))
        agent_path.write_text(tomli_w.dumps(agent))
        return gw_path, agent_path

    def _register_meters(self, gw_cfg: Path) -> None:
        from agent.keys import load_key_file
        from protocol import MeterRole, Registration, sign_registration

        key = load_key_file(self.work / "device.key")
        for m in METERS:
            reg = Registration(meter_id=m.meter_id, public_key=key.public_key, profile=m.profile,
                               serial_number=f"DEMO-{m.unit_id:03d}-{m.link}", role=MeterRole.parse(m.role),
                               zone_id=1, rated_max_power_w=50_000, installer_id="demo",
                               created_at_ms=time.time_ns() // 1_000_000)
            rec = self.work / f"{m.meter_id}.gmreg"
            rec.write_text(sign_registration(reg, key).to_text() + "\n")
            out = subprocess.run([*self.cli, "gateway", "meters", "add", str(rec), "--config", str(gw_cfg)],
                                 capture_output=True, text=True, timeout=60)
            if out.returncode != 0:
                raise RuntimeError(f"gateway meters add {rec.name} failed: {out.stderr or out.stdout}")
            _say(f"registered {m.meter_id:8} ({m.profile}, {m.role}) at the gateway from {rec.name}")

    # ---- run ----------------------------------------------------------------------------------------------
    async def run(self) -> int:
        from agent.keys import create_key_file
        from firmware_config.loader import load_all
        from gateway.keys import create_key_file as create_gateway_key
        from gateway.oracle_authority_key import create_authority_key_file
        from testbed.broker import Broker
        from testbed.meter import SimulatedMeter
        from testbed.ports import free_port, wait_port
        from testbed.rtu import VirtualRtuBus
        from testbed.tcp import ModbusTcpMeters

        _say(f"working directory {self.work}")
        authority = create_authority_key_file(self.work / "chain-bridge.json")
        create_gateway_key(self.work / "gateway.key")
        create_key_file(self.work / "device.key")
        profiles = load_all()
        sims = {m.meter_id: SimulatedMeter(profiles[m.profile], m.unit_id, import_wh=m.import_wh,
                                           export_wh=m.export_wh, power_w=m.power_w, live=True) for m in METERS}
        rtu = VirtualRtuBus([sims[m.meter_id] for m in METERS if m.link == "rtu"], 9600, "N", 1,
                            workdir=self.work / "rtu")
        tcp = ModbusTcpMeters([sims[m.meter_id] for m in METERS if m.link == "tcp"])
        broker = Broker(workdir=self.work / "broker")
        client = None
        try:
            await rtu.start()
            await tcp.start()
            _say(f"simulated meters: 3 on virtual RS-485 {rtu.client_port} (9600 8N1, line timing emulated), "
                 f"1 on Modbus TCP 127.0.0.1:{tcp.port}")
            broker.start()
            _say(f"mosquitto on 127.0.0.1:{broker.port}")
            rpc_port, dash_port = free_port(), free_port()
            self._spawn("chain", [*self.cli, "chain", "serve", "--port", str(rpc_port), "--chain-bridge",
                                  str(authority.pubkey()), "--min-reading-interval", str(DEMO_INTERVAL_S),
                                  "--state", str(self.work / "chain-state.json")])
            await asyncio.to_thread(wait_port, rpc_port, 60.0)
            rpc_url = f"http://127.0.0.1:{rpc_port}"
            _say(f"local chain (LiteSVM + oracle program) at {rpc_url}, chain_bridge {authority.pubkey()}")
            gw_cfg, agent_cfg = self._write_configs(broker.port, rpc_url, rtu.client_port, tcp.port, dash_port)
            self._register_meters(gw_cfg)
            self._spawn("gateway", [*self.cli, "gateway", "run", "--config", str(gw_cfg)])
            await asyncio.to_thread(wait_port, dash_port, 60.0)
            _say(f"gateway running; dashboard http://127.0.0.1:{dash_port}/login?token={DASHBOARD_TOKEN}")
            self._spawn("agent", [*self.cli, "agent", "run", "--config", str(agent_cfg)])
            _say("agent running; every reading is signed, committed to SQLite, then published")
            spy = self._spy(broker.port)
            from gateway.oracle import OracleClient
            from gateway.oracle_layout import DEVNET_PROGRAM_ID

            client = OracleClient(rpc_url, DEVNET_PROGRAM_ID, authority)
            await self._watch(dash_port, client)
            spy.loop_stop()
            spy.disconnect()
            await self._summary(client, dash_port)
            return 0
        except (RuntimeError, TimeoutError, OSError) as exc:
            _say(f"demo failed: {exc}")
            return 1
        finally:
            if client is not None:
                await client.close()
            for name, proc in reversed(list(self.procs.items())):
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        proc.wait(20)
                    except subprocess.TimeoutExpired:
                        _say(f"{name} did not stop on SIGTERM; killing it")
                        proc.kill()
                        proc.wait(5)
            await tcp.stop()
            await rtu.stop()
            broker.close()

    def _spy(self, port: int) -> Any:
        """Subscribe like any fleet monitor and decode what the agent publishes (signatures checked by the
        gateway, not here)."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

        from protocol import ProtocolError, decode_batch

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            try:
                items = decode_batch(bytes(msg.payload))
            except ProtocolError as exc:
                _say(f"unreadable message on {msg.topic}: {exc}")
                return
            for item in items:
                if item.signed is None:
                    continue
                r = item.signed.reading
                row = (r.seq, r.read_at_ms, r.energy_import_wh, r.energy_export_wh)
                self.first.setdefault(r.meter_id, row)
                self.published[r.meter_id] = row

        spy = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="gridmeter-demo-monitor",
                          protocol=MQTTProtocolVersion.MQTTv5)
        spy.on_message = on_message
        spy.connect("127.0.0.1", port)
        spy.subscribe("gridmeter/v1/+/readings", qos=1)
        spy.loop_start()
        return spy

    async def _fleet(self, dash_port: int) -> list[dict[str, Any]]:
        import aiohttp

        headers = {"Authorization": f"Bearer {DASHBOARD_TOKEN}"}
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{dash_port}/api/meters",
                                                      headers=headers) as resp:
            data = await resp.json()
        rows: list[dict[str, Any]] = data["meters"] if isinstance(data, dict) else data
        return rows

    async def _watch(self, dash_port: int, client: Any) -> None:
        deadline = time.monotonic() + self.duration_s if self.duration_s else None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), STATUS_EVERY_S)
            self._check_alive()
            fleet = {row["meter_id"]: row for row in await self._fleet(dash_port)}
            chain = await client.fetch_meter_states([m.meter_id for m in METERS])
            _say("meter     published seq  import Wh   export Wh | gateway accepted | on chain: produced/consumed Wh")
            for m in METERS:
                seq, _at, imp, exp = self.published.get(m.meter_id, (0, 0, 0, 0))
                acc = fleet.get(m.meter_id, {}).get("accepted", 0)
                st = chain.get(m.meter_id)
                on_chain = "-" if st is None else f"{st.total_energy_produced}/{st.total_energy_consumed} " \
                                                  f"in {st.total_readings} submissions"
                print(f"           {m.meter_id:8} {seq:6} {imp:11} {exp:11} | {acc:16} | {on_chain}", flush=True)

    async def _summary(self, client: Any, dash_port: int) -> None:
        chain = await client.fetch_meter_states([m.meter_id for m in METERS])
        fleet = {row["meter_id"]: row for row in await self._fleet(dash_port)}
        _say("summary: register movement since each meter's first (baseline) reading vs on-chain totals, in Wh;")
        _say("         the difference is the open interval, submitted when its epoch closes")
        for m in METERS:
            first, last = self.first.get(m.meter_id), self.published.get(m.meter_id)
            moved_imp = moved_exp = 0
            if first and last:
                moved_imp, moved_exp = last[2] - first[2], last[3] - first[3]
            st = chain.get(m.meter_id)
            prod, cons = (0, 0) if st is None else (st.total_energy_produced, st.total_energy_consumed)
            row = fleet.get(m.meter_id, {})
            print(f"  {m.meter_id:8} registers +{moved_imp} import / +{moved_exp} export; on chain produced {prod},"
                  f" consumed {cons}; gateway accepted {row.get('accepted', 0)} readings, rejected "
                  f"{row.get('rejected', 0)}", flush=True)
