"""The end of a testbed.stack run: settle (meters stop counting, everything drains) and the figures (`report`):
per meter the register movement, the on-chain MeterState totals, the readings read / published / acked / accepted /
rejected, the closed and the open interval, and whether energy was conserved. Functions of a running Stack."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from testbed.stack_meters import ROLES

if TYPE_CHECKING:
    from testbed.stack import Stack


def register_values(self: Stack, meter_id: str) -> tuple[int, int]:
    """(import Wh, export Wh) the meter's registers show now: its counters as the register encoding
    quantises them (0.1 kWh steps on some meters), exactly what an honest read decodes to."""
    from testbed.meter import encode_register

    sim = self.sims[meter_id]
    with sim._lock:
        snap = sim.snapshot()
        vals = {"energy_import_wh": snap["import_wh"], "energy_export_wh": snap["export_wh"]}
        for reg in sim.profile.registers:
            if reg.measurement in vals and not reg.scale_factor:
                vals[reg.measurement] = encode_register(reg, vals[reg.measurement])[1]
    return vals["energy_import_wh"], vals["energy_export_wh"]

def expected(self: Stack) -> dict[str, tuple[int, int]]:
    """meter -> (produced, consumed) the chain must hold once everything the registers moved since the
    gateway's baseline is in closed intervals (role mapping as gateway.submit.intervals.map_role)."""
    from gateway.submit.intervals import map_role
    from protocol import MeterRole

    base = self.baselines()
    out = {}
    for m in self.meters:
        if m.meter_id not in base:
            out[m.meter_id] = (0, 0)
            continue
        imp, exp = register_values(self, m.meter_id)
        _, b_imp, b_exp = base[m.meter_id]
        out[m.meter_id] = map_role(MeterRole(ROLES[m.role]), imp - b_imp, exp - b_exp)
    return out

def settle(self: Stack, timeout_s: float) -> float:
    """Stop every meter counting, then wait until the chain holds all their movement (each meter's open
    interval closes at its first reading in a later epoch). Returns seconds waited; on timeout the report
    states the open intervals."""
    for s in self.sims.values():
        s.set_power(0)
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    while time.monotonic() < deadline:
        self.check_alive("agent", "gateway", "chain")
        totals = self.chain_totals()
        exp = expected(self)
        if all(totals[m][:2] == exp[m] for m in exp) and not outbox_busy(self) and acks_caught_up(self):
            break
        time.sleep(0.5)
    return time.monotonic() - t0

def acks_caught_up(self: Stack) -> bool:
    """Every reading the gateway accepted has had its ack seen on the broker (the report's acked >= accepted:
    without this wait the last ack could still be in flight when the figures were taken)."""
    accepted = dict(self.gw_query("SELECT meter_id, accepted FROM progress"))
    with self._spy_lock:
        return all(self.acked.get(m, 0) >= n for m, n in accepted.items())

def outbox_busy(self: Stack) -> bool:
    return bool(self.gw_query("SELECT 1 FROM outbox WHERE status IN ('pending', 'sent') LIMIT 1"))

def closing_readings(self: Stack) -> dict[str, tuple[int, int, int] | None]:
    """meter -> (closing seq, import, export) of the reading that closed its last confirmed submission."""
    rows = self.gw_query(
        "SELECT o.meter_id, r.seq, r.import_wh, r.export_wh FROM outbox o JOIN readings r ON r.meter_id = "
        "o.meter_id AND r.seq = o.closing_seq WHERE o.status = 'confirmed' AND o.closing_seq = (SELECT "
        "MAX(closing_seq) FROM outbox x WHERE x.meter_id = o.meter_id AND x.status = 'confirmed')")
    out: dict[str, tuple[int, int, int] | None] = {m.meter_id: None for m in self.meters}
    out.update({m: (s, i, e) for m, s, i, e in rows})
    return out

def failed_transactions(self: Stack) -> int | None:
    """Failed transactions in the chain's saved history (the chain must have been stopped to write it)."""
    if not self.chain_state_file.exists():
        return None
    doc = json.loads(self.chain_state_file.read_text())
    return sum(1 for t in doc.get("transactions", []) if t.get("err") is not None)

def report(self: Stack) -> dict[str, Any]:
    """Figures per meter and `energy_conserved`: for every meter the on-chain totals equal the movement of
    its signed counters from the gateway's baseline reading to the reading closing its last confirmed
    interval (closed intervals, exact Wh), that movement plus the open interval equals the simulated
    registers' movement, and nothing was submitted twice."""
    from gateway.submit.intervals import map_role
    from protocol import MeterRole

    health = self.agent_health()
    base, closed = self.baselines(), closing_readings(self)
    totals = self.chain_totals()
    confirmed = dict(self.gw_query("SELECT meter_id, COUNT(*) FROM outbox WHERE status = 'confirmed' "
                                   "GROUP BY meter_id"))
    progress = {r[0]: r[1:] for r in self.gw_query(
        "SELECT meter_id, accepted, held, rejected, duplicates, missing FROM progress")}
    outbox = dict(self.gw_query("SELECT status, COUNT(*) FROM outbox GROUP BY status"))
    meters: dict[str, Any] = {}
    all_ok = bool(self.meters)
    for m in self.meters:
        mid, role = m.meter_id, MeterRole(ROLES[m.role])
        end_imp, end_exp = register_values(self, mid)
        b = base.get(mid)
        c = closed.get(mid)
        start_imp, start_exp = (b[1], b[2]) if b else (end_imp, end_exp)
        moved_imp, moved_exp = end_imp - start_imp, end_exp - start_exp
        c_imp, c_exp = (c[1] - start_imp, c[2] - start_exp) if (b and c) else (0, 0)
        exp_prod, exp_cons = map_role(role, c_imp, c_exp)
        prod, cons, subs = totals.get(mid, (0, 0, 0))
        open_imp, open_exp = moved_imp - c_imp, moved_exp - c_exp
        with self._spy_lock:
            published = len(self.published.get(mid, {}))
            acked = self.acked.get(mid, 0)
        dev = health.get("devices", {}).get(mid, {})
        reads = self.agent_reads_before_restarts.get(mid, 0) + int(dev.get("reads", 0))
        acc, held, rej, dup, missing = progress.get(mid, (0, 0, 0, 0, 0))
        dup_subs = subs - confirmed.get(mid, 0)
        ok = (b is not None and (prod, cons) == (exp_prod, exp_cons) and open_imp >= 0 and open_exp >= 0
              and dup_subs == 0)
        all_ok = all_ok and ok
        meters[mid] = {
            "role": m.role, "profile": m.profile, "link": m.link,
            "registers": {"import_wh_start": start_imp, "import_wh_end": end_imp,
                          "export_wh_start": start_exp, "export_wh_end": end_exp,
                          "moved_import_wh": moved_imp, "moved_export_wh": moved_exp},
            "closed_intervals": {"closing_seq": c[0] if c else None, "import_wh": c_imp, "export_wh": c_exp,
                                 "expected_produced_wh": exp_prod, "expected_consumed_wh": exp_cons},
            "open_interval": {"import_wh": open_imp, "export_wh": open_exp},
            "on_chain": {"produced_wh": prod, "consumed_wh": cons, "submissions": subs},
            "readings": {"read": reads, "published": published, "acked": acked, "accepted": acc, "held": held,
                         "rejected": rej, "duplicates_dropped": dup, "missing": missing},
            "duplicate_submissions": dup_subs,
            "energy_conserved": ok,
        }
    return {
        "energy_conserved": all_ok,
        "meters": meters,
        "outbox": outbox,
        "publish_conflicts": list(self.publish_conflicts),
        "agent_kills": self.kills["agent"], "gateway_kills": self.kills["gateway"],
        "broker_restarts": self.broker_restarts,
    }
