"""Fleet dashboard for staff (aiohttp) + Prometheus /metrics: the store's views over HTTP, HTML/JS in gateway/web/.

Every route requires authentication (it shows fleet data): `Authorization: Bearer <token>`, HTTP Basic
user/password, or the session cookie set by `/login?token=<token>&next=/meter/ID` (or the form that /login
shows; for browsers: EventSource cannot send headers), which then returns to `next`. Anything else gets 401
(a browser asking for a page gets the login form with it).
TLS: set dashboard.tls_cert/tls_key to serve HTTPS directly, or keep listen on 127.0.0.1 behind a TLS reverse
proxy (nginx `proxy_pass http://127.0.0.1:8090;` with `proxy_buffering off;` for the SSE stream at /api/events).
Live updates: /api/events is a Server-Sent Events stream that says "update" whenever the gateway's
database changed (the store's data_version()), so it also sees writes by other gateway processes, and at least every
DEFAULT_SSE_TICK_S (a meter that stops sending changes nothing in the database, but turns late as time passes).

Fleet view at scale: /api/meters computes every meter's health (gateway.health) once per database change and
at most once per DEFAULT_FLEET_CACHE_S, then filters, sorts and returns one page; its `Server-Timing` header
says how long the computation took (wall and CPU).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import html
import json
import logging
import re
import secrets
import ssl
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.config import DashboardSection
from gateway.health import ChainFacts, State, Thresholds, chain_banner
from gateway.metrics import FleetFigures, Metrics
from gateway.registry import Meter
from gateway.store.api import GatewayStore
from gateway.store.fleet import SORT_KEYS
from gateway.store.registry import Registry
from gateway.store.sqlite import Store
from protocol import validate_meter_id
from protocol.errors import InvalidFieldError

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
COOKIE = "gridmeter_session"
DEFAULT_SSE_POLL_S = 1.0  # how often the event stream checks for new data
DEFAULT_SSE_KEEPALIVE_S = 15.0  # comment lines keep proxies from closing an idle stream
DEFAULT_SESSION_TTL_S = 12 * 3600
DEFAULT_MAX_SSE_CLIENTS = 50
DEFAULT_SSE_TICK_S = 5.0  # an update at least this often: states change with time alone
DEFAULT_FLEET_CACHE_S = 1.0  # fleet health is recomputed at most this often (and on every database change)
DEFAULT_STATE_LOG_S = 10.0  # how often meter state changes are looked for (and logged, one line each)
MAX_STATE_LINES = 10  # beyond this many changes in one look, one summary line (a network outage: 10,000 meters)
DEFAULT_PER_PAGE = 100
MAX_PER_PAGE = 500
# Where /login may send a browser back to: a path of this dashboard, never another site ("//host", "/\\host").
_NEXT_RE = re.compile(r"/(?:meter/[A-Za-z0-9._-]{1,64})?")


# Fleet data must not be framed by another site (clickjacking), sniffed into another type, cached by a shared
# proxy, or combined with scripts from anywhere else: app.js is ours, served from /static.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


async def _security_headers(_req: web.Request, resp: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        resp.headers.setdefault(name, value)


def _same(given: str, expected: str) -> bool:
    """Constant-time comparison of a credential from the request with the configured one. Header bytes that are
    not UTF-8 arrive as surrogates (aiohttp decodes with surrogateescape): they are simply not equal."""
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode("utf-8"))


class Dashboard:
    def __init__(self, cfg: DashboardSection, store: GatewayStore | str | Path, registry: Registry | str | Path,
                 metrics: Metrics, *, clock: Callable[[], float] = time.time, thresholds: Thresholds | None = None,
                 epoch_s: int = 900) -> None:
        self.cfg, self.metrics, self.clock = cfg, metrics, clock
        self.thresholds = thresholds or Thresholds()
        self.epoch_s = epoch_s
        # the gateway's store and registry (SQLite or PostgreSQL), or the SQLite files of both, opened here
        self.store: GatewayStore = Store(store) if isinstance(store, (str, Path)) else store
        self.registry = Registry(registry) if isinstance(registry, (str, Path)) else registry
        self._closers = [o.close for o, arg in ((self.store, store), (self.registry, registry)) if o is not arg]
        self.sessions: dict[str, float] = {}
        self.sse_clients = 0
        self.sse_tick_s = DEFAULT_SSE_TICK_S
        self._meters: tuple[tuple[int, int], dict[str, Meter]] | None = None
        self._fleet: tuple[float, tuple[object, ...], int, list[dict[str, Any]]] | None = None
        self._agg: tuple[tuple[object, ...], dict[str, Any]] | None = None
        self._states: dict[str, tuple[str, str | None]] | None = None  # last logged state of each meter
        self.last_compute_ms: tuple[float, float] = (0.0, 0.0)  # wall, CPU of the last fleet computation
        self.fleet_cache_hit = False  # whether the last fleet_rows() was served from the cache
        metrics.epoch.set(epoch_s)
        metrics.add_fleet_collector(self.fleet_figures)

    def close(self) -> None:
        for close in self._closers:
            close()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])  # type: ignore[list-item]  # aiohttp's Protocol names the args
        app.on_response_prepare.append(_security_headers)
        app.cleanup_ctx.append(self._state_logger)
        r = app.router
        r.add_get("/login", self.login)
        r.add_post("/login", self.login)
        r.add_get("/", self._static("index.html"))
        r.add_get("/meter/{meter_id}", self._static("meter.html"))
        r.add_get("/static/{name}", self.static)
        r.add_get("/api/meters", self.api_meters)
        r.add_get("/api/meters/{meter_id}", self.api_meter)
        r.add_get("/api/rejections", self.api_rejections)
        r.add_get("/api/held", self.api_held)
        r.add_get("/api/events", self.events)
        r.add_get("/metrics", self.prometheus)
        return app

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.cfg.tls_cert:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        return ctx

    # ---- auth ---------------------------------------------------------------------------------------
    def _token_ok(self, token: str) -> bool:
        return bool(self.cfg.token) and _same(token, self.cfg.token)

    def _basic_ok(self, credentials: str) -> bool:
        if not self.cfg.username:
            return False
        try:
            user, _, pw = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (ValueError, UnicodeError):
            return False
        user_ok = _same(user, self.cfg.username)  # both compared always: no early exit on a wrong user name
        pw_ok = _same(pw, self.cfg.password)
        return user_ok and pw_ok

    def _authorized(self, req: web.Request) -> bool:
        auth = req.headers.get("Authorization", "")
        if auth.startswith("Bearer "):
            return self._token_ok(auth[7:].strip())
        if auth.startswith("Basic "):
            return self._basic_ok(auth[6:].strip())
        sid = req.cookies.get(COOKIE, "")
        expiry = self.sessions.get(sid)
        return expiry is not None and expiry > self.clock()

    @web.middleware
    async def _auth(self, req: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                    ) -> web.StreamResponse:
        if req.path in ("/login", "/static/style.css") or self._authorized(req):  # the login form needs the CSS
            return await handler(req)
        challenge = 'Basic realm="gridmeter"' if self.cfg.username else 'Bearer realm="gridmeter"'
        if req.method == "GET" and (req.path == "/" or req.path.startswith("/meter/")) \
                and "text/html" in req.headers.get("Accept", ""):
            return self._login_form(req.path, status=401, headers={"WWW-Authenticate": challenge})
        return web.json_response({"error": "authentication required"}, status=401,
                                 headers={"WWW-Authenticate": challenge})

    @staticmethod
    def _next(value: str) -> str:
        """The page to return to after login: a dashboard page, else the fleet view."""
        return value if _NEXT_RE.fullmatch(value) else "/"

    def _login_form(self, next_path: str, *, status: int = 200, headers: dict[str, str] | None = None,
                    error: str = "") -> web.Response:
        page = (WEB_DIR / "login.html").read_text(encoding="utf-8")
        page = page.replace("{next}", html.escape(self._next(next_path), quote=True))
        page = page.replace("{error}", html.escape(error))
        return web.Response(text=page, content_type="text/html", status=status, headers=headers)

    async def login(self, req: web.Request) -> web.StreamResponse:
        """GET /login?token=T&next=/meter/ID (a link), POST /login (the form): session cookie, back to `next`."""
        form = await req.post() if req.method == "POST" else req.query
        token, next_path = str(form.get("token", "")), self._next(str(form.get("next", "/")))
        if not token and req.method == "GET":
            return self._login_form(next_path)
        if not self._token_ok(token):
            if "text/html" in req.headers.get("Accept", ""):
                return self._login_form(next_path, status=401, error="That token is not right.")
            return web.json_response({"error": "bad token"}, status=401)
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        self.sessions = {s: t for s, t in self.sessions.items() if t > now}
        self.sessions[sid] = now + DEFAULT_SESSION_TTL_S
        resp = web.HTTPFound(next_path)
        secure = bool(self.cfg.tls_cert) or self.cfg.behind_tls_proxy
        resp.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", secure=secure, max_age=DEFAULT_SESSION_TTL_S)
        raise resp

    # ---- pages -----------------------------------------------------------------------------------------
    def _static(self, name: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(_req: web.Request) -> web.StreamResponse:
            return web.FileResponse(WEB_DIR / name)
        return handler

    async def static(self, req: web.Request) -> web.StreamResponse:
        name = req.match_info["name"]
        if name not in {"app.js", "style.css", "favicon.svg"}:
            raise web.HTTPNotFound()
        return web.FileResponse(WEB_DIR / name)

    # ---- API -------------------------------------------------------------------------------------------
    def _json(self, data: Any) -> web.Response:
        return web.json_response(data, dumps=lambda d: json.dumps(d, separators=(",", ":")))

    def _registered(self) -> dict[str, Meter]:
        """The registry, re-read only when it changed (10,000 meters: tens of ms per read)."""
        version = self.registry.data_version()
        if self._meters is None or self._meters[0] != version:
            self._meters = (version, self.registry.snapshot())
        return self._meters[1]

    def fleet_rows(self) -> tuple[int, list[dict[str, Any]]]:
        """(now_ms, every meter with its health): recomputed on a database or registry change, at most once per
        DEFAULT_FLEET_CACHE_S otherwise."""
        meters = self._registered()
        now = self.clock()
        key = (self.store.data_version(), self.registry.data_version(),
               int(now // DEFAULT_FLEET_CACHE_S))
        self.fleet_cache_hit = self._fleet is not None and self._fleet[1] == key
        if self._fleet is not None and self.fleet_cache_hit:
            return self._fleet[2], self._fleet[3]
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        now_ms = int(now * 1000)
        rows = self.store.fleet_health(meters, now_ms, self.thresholds)
        self.last_compute_ms = ((time.perf_counter() - wall0) * 1000, (time.thread_time() - cpu0) * 1000)
        self._fleet = (now, key, now_ms, rows)
        return now_ms, rows

    def log_state_changes(self) -> list[str]:
        """One log line per meter whose health state changed since the last look (WARNING into a bad state, INFO
        back to ok); a summary line instead when many changed at once. Returns the lines."""
        _now, rows = self.fleet_rows()
        states = {r["meter_id"]: (r["state"], r["state_reason"]) for r in rows}
        before, self._states = self._states, states
        if before is None:  # first look: one line for the fleet, no change lines
            counts = Counter(s for s, _ in states.values())
            line = "fleet: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no meters registered")
            log.info("%s", line)
            return [line]
        changed = [(m, before.get(m), st) for m, st in states.items() if before.get(m) != st]
        lines = []
        if len(changed) > MAX_STATE_LINES:
            moves = Counter(f"{old[0] if old else 'unregistered'} -> {new[0]}" for _m, old, new in changed)
            line = f"{len(changed)} meters changed state: " + ", ".join(f"{n} {k}" for k, n in moves.most_common())
            log.warning("%s", line)
            return [line]
        for mid, old, new in changed:
            text = next(r["state_text"] for r in rows if r["meter_id"] == mid)
            line = f"meter {mid}: {old[0] if old else 'unregistered'} -> {new[0]}: {text}"
            log.log(logging.INFO if new[0] in (State.OK, State.NEW, State.RETIRED) else logging.WARNING, "%s", line)
            lines.append(line)
        return lines

    async def _state_logger(self, _app: web.Application) -> AsyncIterator[None]:
        async def loop() -> None:
            while True:
                try:
                    self.log_state_changes()
                except Exception:  # a database hiccup must not end the dashboard's logging for good
                    log.exception("looking for meter state changes failed; trying again")
                await asyncio.sleep(DEFAULT_STATE_LOG_S)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    def fleet_figures(self) -> FleetFigures:
        _now, rows = self.fleet_rows()
        live = [r for r in rows if r["state"] != State.RETIRED]
        return FleetFigures(
            states=dict(Counter(r["state"] for r in rows)),
            held_by_reason=dict(Counter(r["state_reason"] for r in rows if r["state"] == State.HELD)),
            lags_s=[r["lag_s"] for r in live if r["lag_s"] is not None],
            last_seen_s={r["meter_id"]: r["last_seen_ms"] / 1000 for r in live if r["last_seen_ms"] is not None},
            held_intervals_by_reason=self._aggregates()["held_intervals"])

    def chain_facts(self, now_ms: int) -> ChainFacts:
        f = self.metrics.chain.facts()
        stats = self._outbox_stats(now_ms)
        age = stats["oldest_age_s"]
        return ChainFacts(f.enabled, f.reachable, f.failing_reason, f.failing_message, f.failing_since_ms,
                          f.last_ok_ms, f.last_submission_ms, None if age is None else age * 1000,
                          stats["counts"].get("pending", 0) + stats["counts"].get("sent", 0), self.epoch_s * 1000)

    def _chain_doc(self, now_ms: int) -> dict[str, Any]:
        c = self.chain_facts(now_ms)
        banner = chain_banner(c, now_ms)
        return {"enabled": c.enabled, "rpc_reachable": c.reachable, "failing_reason": c.failing_reason,
                "failing_message": c.failing_message, "failing_since_ms": c.failing_since_ms,
                "last_ok_ms": c.last_ok_ms, "last_submission_ms": c.last_submission_ms,
                "oldest_unconfirmed_age_s": None if c.oldest_unconfirmed_age_ms is None
                else c.oldest_unconfirmed_age_ms // 1000, "unconfirmed": c.unconfirmed, "epoch_s": self.epoch_s,
                "errors_by_reason": self._chain_errors(),
                "banner": None if banner is None else {"kind": banner[0], "text": banner[1]}}

    def _chain_errors(self) -> dict[str, int]:
        """Failed submitter cycles by reason, and submissions the oracle refused (`refused:<oracle error>`)."""
        out = self.metrics.chain.error_counts()
        for fam in self.metrics.tx_failed.collect():
            for smp in fam.samples:
                if smp.name.endswith("_total"):
                    out[f"refused:{smp.labels['error']}"] = int(smp.value)
        return out

    async def api_meters(self, req: web.Request) -> web.Response:
        """?state=late,silent&q=HOUSE&sort=state|meter|lag|last_seen|held|rejected|zone&order=asc|desc
        &page=1&per_page=100: one page of the fleet, and counts per state over all of it."""
        q = req.query
        try:
            states = {s for s in q.get("state", "").split(",") if s}
            bad = states - {s.value for s in State}
            if bad:
                raise ValueError(f"state: unknown {sorted(bad)} (known: {', '.join(s.value for s in State)})")
            sort = q.get("sort", "state")
            if sort not in SORT_KEYS:
                raise ValueError(f"sort: must be one of {', '.join(SORT_KEYS)} (got {sort!r})")
            order = q.get("order", "asc")
            if order not in ("asc", "desc"):
                raise ValueError(f"order: must be asc or desc (got {order!r})")
            page, per_page = int(q.get("page", "1")), int(q.get("per_page", str(DEFAULT_PER_PAGE)))
            if page < 1 or not 1 <= per_page <= MAX_PER_PAGE:
                raise ValueError(f"page must be >= 1 and per_page in 1..{MAX_PER_PAGE}")
        except ValueError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        needle = q.get("q", "").strip().lower()
        wall0, cpu0 = time.perf_counter(), time.thread_time()
        now_ms, rows = self.fleet_rows()
        hit = self.fleet_cache_hit
        counts = Counter(r["state"] for r in rows)
        held_by_reason = Counter(r["state_reason"] for r in rows if r["state"] == State.HELD)
        sel = [r for r in rows if (not states or r["state"] in states)
               and (not needle or needle in r["meter_id"].lower() or needle in (r["state_reason"] or ""))]
        sel.sort(key=SORT_KEYS[sort], reverse=order == "desc")
        pages = max(1, -(-len(sel) // per_page))
        shown = [dict(r) for r in sel[(page - 1) * per_page : page * per_page]]
        chain = self.store.outbox_by_meters([r["meter_id"] for r in shown])
        for r in shown:
            r["chain"] = chain.get(r["meter_id"], {})
        doc = {"now_ms": now_ms, "total": len(rows), "matched": len(sel), "page": page, "per_page": per_page,
               "pages": pages, "counts": {s.value: counts.get(s.value, 0) for s in State},
               "held_by_reason": dict(held_by_reason), "meters": shown,
               "rejections_by_reason": self._aggregates()["rejections"], "outbox": self._outbox_stats(now_ms),
               "chain": self._chain_doc(now_ms)}
        resp = self._json(doc)
        fw, fc = self.last_compute_ms
        rw, rc = (time.perf_counter() - wall0) * 1000, (time.thread_time() - cpu0) * 1000
        resp.headers["Server-Timing"] = (f'fleet;dur={fw:.1f};desc="health of all meters (last computation)", '
                                         f"fleetcpu;dur={fc:.1f}, request;dur={rw:.1f}, requestcpu;dur={rc:.1f}, "
                                         f'cache;desc="{"hit" if hit else "miss"}"')
        return resp

    async def api_held(self, req: web.Request) -> web.Response:
        meter = req.query.get("meter") or None
        return self._json({"readings": self.store.held_readings(meter, 200),
                           "intervals": self.store.held_intervals(meter, 200)})

    def _aggregates(self) -> dict[str, Any]:
        """Whole-table counts (outbox by status, rejections by reason): they scan an index, so they are taken
        once per fleet computation (fleet_rows' key), not on every request."""
        self.fleet_rows()
        assert self._fleet is not None
        key = self._fleet[1]
        if self._agg is None or self._agg[0] != key:
            self._agg = (key, {
                "outbox": self.store.outbox_status_counts(),
                "rejections": self.store.rejection_counts(),
                "held_intervals": self.store.held_interval_counts()})
        return self._agg[1]

    def _outbox_stats(self, now_ms: int) -> dict[str, Any]:
        counts = self._aggregates()["outbox"]
        oldest = self.store.oldest_undecided_ms()
        return {"counts": counts, "oldest_age_s": None if oldest is None else (now_ms - oldest) // 1000}

    async def api_meter(self, req: web.Request) -> web.Response:
        try:
            mid = validate_meter_id(req.match_info["meter_id"])
        except InvalidFieldError as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        meters = self.registry.snapshot()
        if mid not in meters:
            raise web.HTTPNotFound(text=f"{mid} is not registered")
        now_ms = int(self.clock() * 1000)
        overview = self.store.fleet_health({mid: meters[mid]}, now_ms, self.thresholds)[0]
        overview["chain"] = self.store.outbox_by_meters([mid]).get(mid, {})
        return self._json({"now_ms": now_ms, "meter": overview, "chain": self._chain_doc(now_ms),
                           "held": self.store.held_readings(mid, 50),
                           "readings": self.store.meter_readings(mid),
                           "intervals": self.store.meter_intervals(mid),
                           "gaps": self.store.meter_gaps(mid),
                           "rejections": self.store.rejections(mid, 50)})

    async def api_rejections(self, req: web.Request) -> web.Response:
        meter = req.query.get("meter") or None
        return self._json({"rejections": self.store.rejections(meter)})

    async def prometheus(self, _req: web.Request) -> web.Response:
        body = generate_latest(self.metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def events(self, req: web.Request) -> web.StreamResponse:
        if self.sse_clients >= DEFAULT_MAX_SSE_CLIENTS:
            raise web.HTTPServiceUnavailable(text="too many live dashboards")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(req)
        self.sse_clients += 1
        try:
            version, quiet = None, 0.0
            await resp.write(b"retry: 2000\n\n")
            while self._authorized(req):  # a session that expires mid-stream ends the stream
                v = (self.store.data_version(), self.registry.data_version())
                if v != version or quiet >= self.sse_tick_s:
                    version, quiet = v, 0.0
                    await resp.write(f"event: update\ndata: {json.dumps({'at_ms': int(self.clock() * 1000)})}\n\n"
                                     .encode())
                elif quiet >= DEFAULT_SSE_KEEPALIVE_S:
                    quiet = 0.0
                    await resp.write(b": keepalive\n\n")
                await asyncio.sleep(DEFAULT_SSE_POLL_S)
                quiet += DEFAULT_SSE_POLL_S
        except ConnectionResetError:
            pass  # the browser went away
        finally:
            self.sse_clients -= 1
        return resp

