"""What a household wants to know, from what the agent already has in memory (no SD-card writes).

- `DayCounters`: per meter the live power and today's import/export: register movement since the first reading
  of the local day this process saw (after a restart mid-day: since then, and the page says so).
- `explain(health)`: the agent's /health snapshot as a few plain sentences (what is wrong, what to do), used by
  the household page and by `gridmeter agent status`.

Energy stays integer Wh here; only the page divides by 1000 for display.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.chain_view import ChainView
    from agent.config import AgentConfig
    from agent.homeassistant import HomeAssistant
    from agent.poller import MeterSpec


def local_day(at_ms: int) -> str:
    return time.strftime("%Y-%m-%d", time.localtime(at_ms / 1000))


def _local_midnight_ms(at_ms: int) -> int:
    t = time.localtime(at_ms / 1000)
    return int(time.mktime((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, -1))) * 1000


@dataclass
class _Meter:
    day: str
    since_ms: int
    base_import_wh: int
    base_export_wh: int
    import_wh: int
    export_wh: int
    read_at_ms: int
    power_w: int | None


class DayCounters:
    """Register movement per meter since the start of the local day (or since this process first read it)."""

    def __init__(self) -> None:
        self._m: dict[str, _Meter] = {}

    def observe(self, meter_id: str, read_at_ms: int, import_wh: int, export_wh: int, power_w: int | None) -> None:
        """A good reading (glitch-filtered counters) was stored."""
        day = local_day(read_at_ms)
        m = self._m.get(meter_id)
        if m is None or m.day != day or import_wh < m.base_import_wh or export_wh < m.base_export_wh:
            # new day (the last reading of yesterday is the best baseline we have), first reading, or a meter reset
            base_i, base_e = (m.import_wh, m.export_wh) if m is not None and m.day != day else (import_wh, export_wh)
            since = _local_midnight_ms(read_at_ms) if m is not None and m.day != day else read_at_ms
            if import_wh < base_i or export_wh < base_e:
                base_i, base_e, since = import_wh, export_wh, read_at_ms
            m = self._m[meter_id] = _Meter(day, since, base_i, base_e, import_wh, export_wh, read_at_ms, power_w)
        m.import_wh, m.export_wh, m.read_at_ms, m.power_w = import_wh, export_wh, read_at_ms, power_w

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {
            meter: {
                "power_w": m.power_w,
                "import_wh": m.import_wh,
                "export_wh": m.export_wh,
                "today_import_wh": m.import_wh - m.base_import_wh,
                "today_export_wh": m.export_wh - m.base_export_wh,
                "today_since_ms": m.since_ms,
                "today_from_midnight": m.since_ms == _local_midnight_ms(m.read_at_ms),
                "read_at_ms": m.read_at_ms,
            }
            for meter, m in self._m.items()
        }


def _ago(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "never"
    s = max(0, (now_ms - ms) // 1000)
    if s < 90:
        return f"{s} s ago"
    if s < 5400:
        return f"{s // 60} min ago"
    if s < 172_800:
        return f"{s // 3600} h ago"
    return f"{s // 86400} days ago"


def explain(h: dict[str, Any]) -> list[str]:
    """Problems in plain words, most important first; [] when all is well."""
    out: list[str] = []
    now = int(h.get("now_ms") or time.time() * 1000)
    clock = h.get("clock", {})
    if not clock.get("synced", True):
        out.append("The clock is not synchronised yet, so readings are held (kept, not counted) until it is. "
                   "The Pi needs internet access to a time server: check the network, then `timedatectl` "
                   "(it should say 'System clock synchronized: yes').")
    mqtt = h.get("mqtt", {})
    if not mqtt.get("connected", True):
        why = mqtt.get("last_connect_error") or "no answer"
        out.append(f"Not connected to the gateway's message broker ({why}). Readings are kept safely on the SD "
                   "card and sent when the connection is back. Check the internet connection; if it stays, call "
                   "your installer.")
    q = h.get("queue", {})
    if q.get("commit_error"):
        out.append(f"Readings cannot be saved to the SD card: {q['commit_error']}. The card may be full or "
                   "failing: call your installer.")
    if q.get("full"):
        out.append("The reading buffer is full, so new readings are not taken until the gateway confirms older "
                   "ones. Call your installer.")
    age = q.get("oldest_age_s")
    if age is not None and age > 3600 and mqtt.get("connected", True):
        out.append(f"Readings from {_ago(q.get('oldest_read_at_ms'), now)} are still waiting for the gateway's "
                   "confirmation.")
    for meter, d in sorted(h.get("devices", {}).items()):
        if d.get("consecutive_errors"):
            err = d.get("last_error") or "no answer"
            out.append(f"Meter {meter} does not answer ({err}); last good reading {_ago(d.get('last_read_ms'), now)}."
                       " Check that the meter has power and that its RS-485 cable is connected.")
        elif d.get("last_glitch") and d.get("glitches"):
            out.append(f"Meter {meter} sent implausible values ({d['last_glitch']}); they were kept aside, not "
                       "counted.")
    failed = h.get("failed_task")
    if failed:
        out.insert(0, f"Part of the agent stopped ({failed.get('task')}: {failed.get('reason')}); the service "
                      "restarts by itself. If this stays, call your installer.")
    if h.get("store_replaced"):
        out.append(f"The reading store was damaged and was set aside ({h['store_replaced']}); a new one was "
                   "started. Call your installer.")
    return out


def summary(h: dict[str, Any]) -> str:
    """`gridmeter agent status` without --json: a few lines a person can read."""
    now = int(h.get("now_ms") or time.time() * 1000)
    q, mqtt, clock = h.get("queue", {}), h.get("mqtt", {}), h.get("clock", {})
    lines = [f"gridmeter agent: {'OK' if h.get('status') == 'ok' else 'needs attention'}"]
    lines.append(f"  last reading {_ago(h.get('last_read_ms'), now)}, last sent {_ago(h.get('last_publish_ms'), now)},"
                 f" last confirmed by the gateway {_ago(h.get('last_ack_ms'), now)}")
    oldest = q.get("oldest_read_at_ms")
    lines.append(f"  waiting to be confirmed: {q.get('depth', 0)} readings"
                 + (f" (oldest from {_ago(oldest, now)})" if oldest is not None else ""))
    synced = "synchronised" if clock.get("synced") else "NOT synchronised"
    lines.append(f"  clock: {synced} ({clock.get('source', '?')}); "
                 f"broker: {'connected' if mqtt.get('connected') else 'NOT connected'}")
    home = h.get("household", {})
    for meter, d in sorted(h.get("devices", {}).items()):
        hh = home.get(meter, {})
        power = hh.get("power_w")
        state = "not answering" if d.get("consecutive_errors") else "ok"
        lines.append(f"  meter {meter}: {state}, last read {_ago(d.get('last_read_ms'), now)}"
                     + (f", {power} W now" if power is not None else "")
                     + (f", today +{hh['today_import_wh'] / 1000:.3f} kWh import / +{hh['today_export_wh'] / 1000:.3f}"
                        " kWh export" if hh else ""))
    problems = explain(h)
    if problems:
        lines.append("What needs attention:")
        lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)


# -- the optional helpers, built only when configured: solders alone is ~20 MB of RSS ---------------------------

def chain_view_for(cfg: AgentConfig, meters: Sequence[MeterSpec]) -> ChainView | None:
    st = cfg.status
    if not st.chain_rpc_url:
        return None
    from agent.chain_view import ChainView

    return ChainView(st.chain_rpc_url, st.chain_program_id, [m.meter_id for m in meters],
                     refresh_s=st.chain_refresh_s)


def homeassistant_for(cfg: AgentConfig, meters: Sequence[MeterSpec],
                      snapshot: Callable[[], tuple[Any, Any, int]]) -> HomeAssistant | None:
    if not cfg.homeassistant.enabled:
        return None
    from importlib.metadata import PackageNotFoundError, version

    from agent.homeassistant import HomeAssistant

    try:
        ver = version("gridmeter")
    except PackageNotFoundError:
        ver = "unknown"
    return HomeAssistant(cfg.homeassistant, {m.meter_id: m.profile.id for m in meters}, cfg.agent.poll_interval_s,
                         snapshot, ver)
