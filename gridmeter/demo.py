"""`gridmeter demo`: the whole chain on one machine, on embedded defaults, with nothing faked in between.

    simulated meters (up to 3 on a virtual RS-485 bus via socat, the rest over Modbus TCP)
      -> `gridmeter agent run`    (real process: reads, signs, stores, publishes)
      -> mosquitto                (real broker on a free port)
      -> `gridmeter gateway run`  (real process: verifies, checks, acks, submits)
      -> `gridmeter chain serve`  (real Solana VM executing the oracle-compatible program, JSON-RPC)

It prints what the agent publishes (decoded from the signed MQTT messages), what the gateway accepted and what
the chain holds (MeterState accounts read over JSON-RPC). After --duration the meters stop counting, the open
intervals close, and a summary compares each meter's register movement with its on-chain totals. With --json the
progress goes to stderr and stdout's last line is one JSON object (see testbed.stack.Stack.report), including the
top-level boolean `energy_conserved`; the exit code is 0 only if it is true.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEMO_INTERVAL_S = 10  # market epoch and chain min_reading_interval for the demo (production: 900 s / 60 s)
DEFAULT_DURATION_S = 75
DEFAULT_METERS = 4
MAX_METERS = 60
STATUS_EVERY_S = 5.0
# After --duration: meters stop counting; each open interval closes at the first reading of the next epoch, is
# submitted and confirmed. Two epochs plus the submit round trips, with room for a loaded machine.
SETTLE_S = 4 * DEMO_INTERVAL_S + 60


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "demo",
        help="run simulated meters -> agent -> broker -> gateway -> local chain",
        description="Run the whole chain locally on embedded defaults and print what flows through it. Needs "
        "mosquitto and socat (scripts/demo installs them). Exit codes: 0 done (with --json: energy conserved), "
        "1 energy not conserved or a component failed, 2 bad arguments, 130 interrupted before the summary.",
    )
    p.add_argument("--duration", type=float, default=DEFAULT_DURATION_S,
                   help=f"seconds to run before the summary (default {DEFAULT_DURATION_S}; 0 = until Ctrl-C)")
    p.add_argument("--meters", type=int, default=DEFAULT_METERS,
                   help=f"simulated meters, 1..{MAX_METERS} (default {DEFAULT_METERS}; the first 3 on RS-485)")
    p.add_argument("--json", action="store_true",
                   help="unattended: progress on stderr, one JSON object with the figures as stdout's last line")
    p.add_argument("--workdir", default=None,
                   help="keep keys, configs, databases and logs here (default: a temporary directory, removed)")
    p.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    if args.duration < 0:
        print("gridmeter demo: --duration must be >= 0", file=sys.stderr)
        return 2
    if not 1 <= args.meters <= MAX_METERS:
        print(f"gridmeter demo: --meters must be 1..{MAX_METERS} (got {args.meters})", file=sys.stderr)
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
        return Demo(work, args.duration, args.meters, json_out=args.json).run()
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


class _Stop(Exception):
    pass


class Demo:
    def __init__(self, work: Path, duration_s: float, n_meters: int = DEFAULT_METERS, *, json_out: bool = False
                 ) -> None:
        self.work, self.duration_s, self.n_meters, self.json_out = work, duration_s, n_meters, json_out
        self.out = sys.stderr if json_out else sys.stdout  # JSON mode: stdout carries only the result
        self._stopping = False

    def _say(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.out, flush=True)

    def _on_signal(self, _sig: int, _frame: object) -> None:
        if self._stopping:
            raise KeyboardInterrupt
        self._stopping = True

    def run(self) -> int:
        from testbed.stack import Stack, StackError, StackOptions
        from testbed.stack_config import DASHBOARD_TOKEN
        from testbed.stack_meters import demo_meters

        meters = demo_meters(self.n_meters)
        stack = Stack(self.work, meters, StackOptions(epoch_s=DEMO_INTERVAL_S, poll_interval_s=2.0), say=self._say)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        t0 = time.monotonic()
        try:
            self._say(f"working directory {self.work}")
            stack.start()
            n_rtu = sum(1 for m in meters if m.link == "rtu")
            self._say(f"simulated meters: {n_rtu} on virtual RS-485 (9600 8N1, line timing emulated), "
                      f"{len(meters) - n_rtu} on Modbus TCP; mosquitto on 127.0.0.1:{stack.broker.port}")  # type: ignore[union-attr]
            self._say(f"local chain (LiteSVM + oracle program) at {stack.rpc_url}, chain_bridge "
                      f"{stack.authority.pubkey()}")
            self._say(f"gateway running; dashboard http://127.0.0.1:{stack.dash_port}/login?token={DASHBOARD_TOKEN}")
            self._say("agent running; every reading is signed, committed to SQLite, then published")
            self._watch(stack)
            run_s = time.monotonic() - t0
            self._say("meters stop counting; waiting for the open intervals to close and reach the chain")
            settle_s = stack.settle(SETTLE_S)
            report = stack.report()
            stack.stop("chain")  # writes its state file: the transaction history
            report["failed_transactions"] = failed = stack.failed_transactions()
            report["tracebacks"] = stack.tracebacks()
            report.update(meters_count=len(meters), duration_s=round(run_s, 1), settle_s=round(settle_s, 1),
                          epoch_s=DEMO_INTERVAL_S)
            self._summary(report)
            ok = bool(report["energy_conserved"]) and failed == 0 and not any(report["tracebacks"].values())
            if self.json_out:
                print(json.dumps(report, sort_keys=True), flush=True)
                return 0 if ok else 1
            return 0
        except (StackError, TimeoutError, OSError) as exc:
            self._say(f"demo failed: {exc}")
            if self.json_out:
                print(json.dumps({"energy_conserved": False, "error": str(exc)}), flush=True)
            return 1
        except KeyboardInterrupt:
            return 130
        finally:
            stack.close()
            for s, h in old.items():
                signal.signal(s, h)

    def _watch(self, stack: Any) -> None:
        deadline = time.monotonic() + self.duration_s if self.duration_s else None
        next_status = time.monotonic() + STATUS_EVERY_S
        while not self._stopping and (deadline is None or time.monotonic() < deadline):
            time.sleep(0.2)
            stack.check_alive()
            if time.monotonic() < next_status:
                continue
            next_status += STATUS_EVERY_S
            accepted = dict(stack.gw_query("SELECT meter_id, accepted FROM progress"))
            chain = stack.chain_totals()
            self._say("meter      published seq  import Wh   export Wh | gateway accepted | on chain: "
                      "produced/consumed Wh")
            for m in stack.meters:
                with stack._spy_lock:
                    seqs = stack.published.get(m.meter_id, {})
                    seq = max(seqs, default=0)
                    imp = exp = 0
                    if seq:
                        from protocol import decode_reading

                        r = decode_reading(seqs[seq])
                        imp, exp = r.energy_import_wh, r.energy_export_wh
                prod, cons, subs = chain.get(m.meter_id, (0, 0, 0))
                print(f"           {m.meter_id:9} {seq:6} {imp:11} {exp:11} | {accepted.get(m.meter_id, 0):16} | "
                      f"{prod}/{cons} in {subs} submissions", file=self.out, flush=True)

    def _summary(self, report: dict[str, Any]) -> None:
        self._say("summary: register movement since each meter's first (baseline) reading vs on-chain totals, in Wh;")
        self._say("         what the chain does not hold yet is the open interval, submitted when its epoch closes")
        for mid, m in report["meters"].items():
            reg, chain, rd = m["registers"], m["on_chain"], m["readings"]
            print(f"  {mid:8} registers +{reg['moved_import_wh']} import / +{reg['moved_export_wh']} export; on chain "
                  f"produced {chain['produced_wh']}, consumed {chain['consumed_wh']}; gateway accepted "
                  f"{rd['accepted']} readings, rejected {rd['rejected']}", file=self.out, flush=True)
        self._say(f"energy conserved: {'yes' if report['energy_conserved'] else 'NO'}; failed transactions: "
                  f"{report['failed_transactions']}")
