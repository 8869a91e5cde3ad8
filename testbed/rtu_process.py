"""Run a VirtualRtuBus in its own process, so tests can SIGKILL the agent while the meters keep counting.

    python -m testbed.rtu --config bus.json        (a path, or the JSON text itself)

Config: {"baudrate": 9600, "parity": "N", "stopbits": 1, "line_timing": true, "turnaround_ms": 0,
         "workdir": "/tmp/x", "meters": [{"profile": "eastron-sdm630", "unit_id": 1, "import_wh": 0,
         "export_wh": 0, "power_w": 1000, "live": true, "serial_number": 1,
         "framing": {"baudrate": 19200, "parity": "N", "stopbits": 1}}]}
stdout: first line {"ready": true, "client_port": ..., "parity_observable": ...}; then one JSON line per command
read from stdin: {"cmd": "status"} | {"cmd": "fault", "unit_id": 2, "no_reply": true} | {"cmd": "clear_faults"}
| {"cmd": "set_power", "unit_id": 1, "power_w": -500} | {"cmd": "stop"}. EOF on stdin or SIGTERM stops it.
`RtuBusProcess` is the client side of that protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from firmware_config.loader import load_all
from testbed.child_process import stop_child
from testbed.meter import Framing, SimulatedMeter
from testbed.rtu import VirtualRtuBus

DEFAULT_READY_TIMEOUT_S = 20.0
METER_KEYS = ("import_wh", "export_wh", "power_w", "voltage_dv", "frequency_mhz", "power_factor_milli",
              "serial_number", "live", "identify_function_code")


def build_bus(cfg: dict[str, Any]) -> VirtualRtuBus:
    profiles = load_all()
    meters = []
    for m in cfg["meters"]:
        kw = {k: m[k] for k in METER_KEYS if k in m}
        framing = Framing(**m["framing"]) if "framing" in m else None
        meters.append(SimulatedMeter(profiles[m["profile"]], m["unit_id"], framing=framing, **kw))
    return VirtualRtuBus(meters, cfg.get("baudrate", 9600), cfg.get("parity", "N"), cfg.get("stopbits", 1),
                         line_timing=cfg.get("line_timing", True), turnaround_ms=cfg.get("turnaround_ms", 0),
                         workdir=cfg.get("workdir"))


def handle(bus: VirtualRtuBus, cmd: dict[str, Any]) -> dict[str, Any]:
    name = cmd.get("cmd")
    meters = {m.unit_id: m for m in bus.meters}
    if name == "status":
        return {"meters": [m.snapshot() for m in bus.meters], "dropped": bus.core.dropped}
    if name == "fault":
        kw = {k: v for k, v in cmd.items() if k not in ("cmd", "unit_id")}
        bus.set_fault(int(cmd["unit_id"]), **kw)
        return {"ok": True}
    if name == "clear_faults":
        bus.clear_faults()
        return {"ok": True}
    if name == "set_power":
        meters[int(cmd["unit_id"])].set_power(int(cmd["power_w"]))
        return {"ok": True}
    return {"error": f"unknown command {name!r}"}


async def serve(cfg: dict[str, Any]) -> None:
    bus = build_bus(cfg)
    await bus.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(json.dumps({"ready": True, "client_port": bus.client_port, "parity_observable": bus.parity_observable}),
          flush=True)

    async def commands() -> None:
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            try:
                cmd = json.loads(line)
            except json.JSONDecodeError as e:
                print(json.dumps({"error": f"bad JSON: {e}"}), flush=True)
                continue
            if cmd.get("cmd") == "stop":
                print(json.dumps({"ok": True}), flush=True)
                break
            print(json.dumps(handle(bus, cmd)), flush=True)
        stop.set()

    task = asyncio.create_task(commands())
    await stop.wait()
    await bus.stop()
    task.cancel()
    os._exit(0)  # the stdin reader thread may still block in readline


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m testbed.rtu", description="virtual RS-485 bus with meters")
    ap.add_argument("--config", required=True, help="JSON file or JSON text")
    args = ap.parse_args(argv)
    text = args.config if args.config.lstrip().startswith("{") else Path(args.config).read_text()
    asyncio.run(serve(json.loads(text)))
    return 0


class RtuBusProcess:
    """Start `python -m testbed.rtu` and talk to it (sync)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.proc: subprocess.Popen[str] | None = None
        self.client_port = ""
        self.parity_observable = True

    def start(self, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> RtuBusProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "testbed.rtu", "--config", json.dumps(self.config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        ready = self._readline(timeout_s)
        if not ready.get("ready"):
            self.stop()
            raise RuntimeError(f"virtual RTU bus process did not start: {ready}")
        self.client_port, self.parity_observable = ready["client_port"], ready["parity_observable"]
        return self

    def _readline(self, timeout_s: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        import selectors

        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout_s):
                raise TimeoutError(f"no answer from the virtual RTU bus process within {timeout_s}s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"virtual RTU bus process exited ({self.proc.poll()})")
        return dict(json.loads(line))

    def command(self, cmd: dict[str, Any], timeout_s: float = 10.0) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._readline(timeout_s)

    def status(self) -> dict[str, Any]:
        return self.command({"cmd": "status"})

    def stop(self) -> None:
        if self.proc is None:
            return
        stop_child(self.proc)
        for f in (self.proc.stdin, self.proc.stdout):
            if f is not None:
                f.close()
        self.proc = None

    def __enter__(self) -> RtuBusProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


if __name__ == "__main__":
    raise SystemExit(main())
