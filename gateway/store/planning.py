"""The interval planner's SQL (mixed into gateway.store.Store; PostgresStore overrides what differs): which
meters to plan, their inputs (plan state + accepted readings since), and their results saved with the outbox
rows they produced, many meters in one transaction."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence

from gateway.store.database import Transaction
from gateway.store.outbox import OutboxSource
from gateway.store.records import MeterPlan, Planned, PlanState, Point


class Planning:
    """Mixed into gateway.store.Store AFTER Outbox, whose add_planned is the one that runs."""

    conn: sqlite3.Connection
    # provided by gateway.store.outbox.Outbox (declared here for the type checker; no body to shadow it)
    add_planned: Callable[[sqlite3.Connection, OutboxSource, Sequence[Planned], int, int], None]

    def meters_to_plan(self, epoch_s: int | None = None) -> list[str]:
        """Meters with accepted readings the planner has not seen. With epoch_s: only those whose latest reading
        lies in a later epoch than the one their last interval closed in (the others cannot close an interval
        yet: planning them would only move their plan state), and those without a plan state (baseline)."""
        closing = "" if epoch_s is None else "p.last_read_at_ms / ? > s.anchor_read_at_ms / ? AND "
        q = ("SELECT p.meter_id FROM progress p LEFT JOIN plan_state s ON s.meter_id = p.meter_id "
             f"WHERE p.last_read_at_ms IS NOT NULL AND (s.meter_id IS NULL OR {closing}s.last_seq < "
             "(SELECT MAX(seq) FROM readings r WHERE r.meter_id = p.meter_id AND r.status = 'accepted'))")
        params = () if epoch_s is None else (epoch_s * 1000, epoch_s * 1000)
        return [r[0] for r in self.conn.execute(q, params)]

    def plan_inputs(self, meter_id: str, limit: int = 100_000) -> tuple[PlanState, list[Point]]:
        s = self.conn.execute("SELECT baseline_set, last_seq, anchor_read_at_ms, sub_import_wh, sub_export_wh, "
                              "last_import_wh, last_export_wh, last_read_at_ms, last_ts FROM plan_state "
                              "WHERE meter_id = ?", (meter_id,)).fetchone()
        state = PlanState(bool(s[0]), *s[1:]) if s else PlanState()
        pts = [Point(seq, at, imp, exp, bool(rb)) for seq, at, imp, exp, rb in self.conn.execute(
            "SELECT seq, read_at_ms, import_wh, export_wh, rebaseline FROM readings WHERE meter_id = ? AND seq > ? "
            "AND status = 'accepted' ORDER BY seq LIMIT ?", (meter_id, state.last_seq, limit))]
        return state, pts

    def plan_inputs_many(self, meter_ids: Sequence[str], limit: int = 100_000
                         ) -> dict[str, tuple[PlanState, list[Point]]]:
        """plan_inputs of many meters in two queries per 500 meters (not two per meter: on PostgreSQL each query is
        a round trip)."""
        out: dict[str, tuple[PlanState, list[Point]]] = {}
        for i in range(0, len(meter_ids), 500):
            chunk = list(meter_ids[i : i + 500])
            marks = ",".join("?" * len(chunk))
            states = {r[0]: PlanState(bool(r[1]), *r[2:]) for r in self.conn.execute(
                "SELECT meter_id, baseline_set, last_seq, anchor_read_at_ms, sub_import_wh, sub_export_wh, "
                f"last_import_wh, last_export_wh, last_read_at_ms, last_ts FROM plan_state WHERE meter_id IN ({marks})",
                chunk)}
            points: dict[str, list[Point]] = {m: [] for m in chunk}
            for mid, seq, at, imp, exp, rb in self.conn.execute(
                    "SELECT meter_id, seq, read_at_ms, import_wh, export_wh, rebaseline FROM (SELECT r.meter_id, "
                    "r.seq, r.read_at_ms, r.import_wh, r.export_wh, r.rebaseline, "
                    "ROW_NUMBER() OVER (PARTITION BY r.meter_id ORDER BY r.seq) AS n "
                    "FROM readings r LEFT JOIN plan_state s ON s.meter_id = r.meter_id "
                    f"WHERE r.meter_id IN ({marks}) AND r.seq > COALESCE(s.last_seq, 0) AND r.status = 'accepted') "
                    "AS todo WHERE n <= ? ORDER BY meter_id, seq", (*chunk, limit)):
                points[mid].append(Point(seq, at, imp, exp, bool(rb)))
            out.update({m: (states.get(m, PlanState()), points[m]) for m in chunk})
        return out

    def save_plan(self, meter_id: str, state: PlanState, planned: Sequence[Planned], zone_id: int,
                  now_ms: int) -> None:
        self.save_plans([MeterPlan(meter_id, state, list(planned), zone_id)], now_ms)

    def save_plans(self, plans: Sequence[MeterPlan], now_ms: int) -> None:
        """Several meters' plans in ONE transaction (one commit per planner cycle, not one per meter)."""
        with Transaction(self.conn) as c:
            c.executemany("INSERT OR REPLACE INTO plan_state VALUES (?,?,?,?,?,?,?,?,?,?)",
                          [(p.meter_id, int(p.state.baseline_set), p.state.last_seq, p.state.anchor_read_at_ms,
                            p.state.sub_import_wh, p.state.sub_export_wh, p.state.last_import_wh,
                            p.state.last_export_wh, p.state.last_read_at_ms, p.state.last_ts) for p in plans])
            for p in plans:
                if p.planned:
                    self.add_planned(c, OutboxSource.MQTT, p.planned, p.zone_id, now_ms)

