"""Local status endpoint (aiohttp): the household page (/), JSON /health and Prometheus /metrics.

The page (agent/page/: HTML, CSS, JS, no external assets, so it works offline) polls /health on the same origin.

Both are rendered from one health snapshot (a dict built by the service on request), so the JSON and the
metrics can never disagree. The Prometheus registry is our own (not the global default), so nothing else
in the process leaks into /metrics.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

Health = dict[str, Any]
PAGE_DIR = Path(__file__).resolve().parent / "page"
_PAGE_TYPES = {"index.html": "text/html", "page.css": "text/css", "page.js": "text/javascript"}
# The page loads nothing from anywhere else; a browser enforces it.
_PAGE_HEADERS = {"Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
                 "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}

# (JSON key in health["mqtt"], metric name, help, counter?)
_MQTT_METRICS = (
    ("connected", "gridmeter_agent_mqtt_connected", "1 while connected to the broker", False),
    ("connects", "gridmeter_agent_mqtt_connects", "successful broker connections", True),
    ("published_readings", "gridmeter_agent_published_readings", "readings handed to the broker (incl. resends)", True),
    ("published_batches", "gridmeter_agent_published_batches", "batch messages published", True),
    ("puback_failures", "gridmeter_agent_puback_failures", "PUBACKs with a failure reason code", True),
    ("resends", "gridmeter_agent_resends", "stream rewinds after an ack timeout", True),
    ("acks_ok", "gridmeter_agent_acks", "valid gateway acks applied", True),
    ("acks_rejected", "gridmeter_agent_acks_rejected", "acks rejected (forged, malformed, wrong meter)", True),
    ("acked_readings", "gridmeter_agent_acked_readings", "readings covered by gateway acks", True),
    ("store_errors", "gridmeter_agent_publish_store_errors", "drain attempts that could not read the store", True),
)
# (JSON key in health["devices"][meter], metric name, help, counter?)
_DEVICE_METRICS = (
    ("reads", "gridmeter_agent_meter_reads", "successful meter reads", True),
    ("stored", "gridmeter_agent_meter_readings_stored", "signed readings queued for the store", True),
    ("read_errors", "gridmeter_agent_meter_read_errors", "failed meter reads", True),
    ("glitches", "gridmeter_agent_meter_glitches", "readings flagged GLITCH_SUSPECTED", True),
    ("consecutive_errors", "gridmeter_agent_meter_consecutive_errors", "failed reads since the last success", False),
)


class HealthCollector(Collector):
    def __init__(self, health: Callable[[], Health]) -> None:
        self._health = health

    def collect(self) -> Iterator[Metric]:
        h = self._health()
        q = h["queue"]
        yield GaugeMetricFamily("gridmeter_agent_queue_depth", "committed readings not yet acked", q["depth"])
        yield GaugeMetricFamily("gridmeter_agent_queue_oldest_age_seconds", "age of the oldest unacked reading",
                                q["oldest_age_s"] or 0)
        yield GaugeMetricFamily("gridmeter_agent_clock_synced", "1 if the wall clock is synchronised",
                                1 if h["clock"]["synced"] else 0)
        yield CounterMetricFamily("gridmeter_agent_clock_jumps", "wall-clock jumps detected", h["clock"]["jumps"])
        yield GaugeMetricFamily("gridmeter_agent_task_failed", "1 once a background task died (the agent is stopping)",
                                1 if h.get("failed_task") else 0)
        for key, value in sorted(h["store"].items()):
            yield CounterMetricFamily(f"gridmeter_agent_store_{key}", f"store counter {key}", value)
        for key, name, doc, counter in _MQTT_METRICS:
            fam = CounterMetricFamily if counter else GaugeMetricFamily
            yield fam(name, doc, int(h["mqtt"][key]))
        for key, name, doc, counter in _DEVICE_METRICS:
            m = (CounterMetricFamily if counter else GaugeMetricFamily)(name, doc, labels=["meter_id"])
            for meter, dev in sorted(h["devices"].items()):
                m.add_metric([meter], dev.get(key, 0))
            yield m
        last = GaugeMetricFamily("gridmeter_agent_meter_last_read_timestamp_seconds",
                                 "unix time of the last successful read", labels=["meter_id"])
        for meter, dev in sorted(h["devices"].items()):
            if dev.get("last_read_ms") is not None:
                last.add_metric([meter], dev["last_read_ms"] / 1000)
        yield last


class StatusServer:
    def __init__(self, host: str, port: int, health: Callable[[], Health]) -> None:
        self.host, self.port, self._health = host, port, health
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(HealthCollector(health))
        app = web.Application()
        app.router.add_get("/", self._get_page)
        app.router.add_get("/page/{name}", self._get_page)
        app.router.add_get("/health", self._get_health)
        app.router.add_get("/metrics", self._get_metrics)
        self._runner = web.AppRunner(app, access_log=None)

    async def _get_page(self, req: web.Request) -> web.Response:
        name = req.match_info.get("name", "index.html")
        if name not in _PAGE_TYPES:  # a fixed list: no path from the request ever reaches the file system
            raise web.HTTPNotFound(text=f"no page asset {name!r}")
        return web.Response(body=(PAGE_DIR / name).read_bytes(), content_type=_PAGE_TYPES[name],
                            charset="utf-8", headers=_PAGE_HEADERS)

    async def _get_health(self, _req: web.Request) -> web.Response:
        h = self._health()
        return web.Response(text=json.dumps(h, sort_keys=True, indent=1), content_type="application/json",
                            status=200)

    async def _get_metrics(self, _req: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        if self.port == 0:
            server = site._server
            assert isinstance(server, asyncio.Server)
            self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        await self._runner.cleanup()
