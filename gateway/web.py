"""Fleet dashboard for utility staff (aiohttp) + Prometheus /metrics. Static HTML/JS in gateway/web/.

Every route requires authentication (it shows fleet data): `Authorization: Bearer <token>`, HTTP Basic
user/password, or the session cookie set by `/login?token=<token>` (for browsers: EventSource cannot
send headers). Anything else gets 401. TLS: set dashboard.tls_cert/tls_key to serve HTTPS directly, or
keep listen on 127.0.0.1 behind a TLS reverse proxy (nginx `proxy_pass http://127.0.0.1:8090;` with
`proxy_buffering off;` for the SSE stream at /api/events).
Live updates: /api/events is a Server-Sent Events stream that says "update" whenever the gateway's
database changed (PRAGMA data_version), so it also sees writes by other gateway processes.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import secrets
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway import fleet
from gateway.config import DashboardSection
from gateway.database import connect
from gateway.metrics import Metrics
from gateway.registry import Registry
from protocol import validate_meter_id
from protocol.errors import InvalidFieldError

WEB_DIR = Path(__file__).resolve().parent / "web"
COOKIE = "gridmeter_session"
DEFAULT_SSE_POLL_S = 1.0  # how often the event stream checks for new data
DEFAULT_SSE_KEEPALIVE_S = 15.0  # comment lines keep proxies from closing an idle stream
DEFAULT_SESSION_TTL_S = 12 * 3600
DEFAULT_MAX_SSE_CLIENTS = 50


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
    def __init__(self, cfg: DashboardSection, db_path: Path, registry_path: Path, metrics: Metrics,
                 *, clock: Callable[[], float] = time.time) -> None:
        self.cfg, self.metrics, self.clock = cfg, metrics, clock
        self.conn = connect(db_path)
        self.registry = Registry(registry_path)
        self.sessions: dict[str, float] = {}
        self.sse_clients = 0

    def close(self) -> None:
        self.conn.close()
        self.registry.close()

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.on_response_prepare.append(_security_headers)
        r = app.router
        r.add_get("/login", self.login)
        r.add_get("/", self._static("index.html"))
        r.add_get("/meter/{meter_id}", self._static("meter.html"))
        r.add_get("/static/{name}", self.static)
        r.add_get("/api/meters", self.api_meters)
        r.add_get("/api/meters/{meter_id}", self.api_meter)
        r.add_get("/api/rejections", self.api_rejections)
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
        if req.path == "/login" or self._authorized(req):
            return await handler(req)
        challenge = 'Basic realm="gridmeter"' if self.cfg.username else 'Bearer realm="gridmeter"'
        return web.json_response({"error": "authentication required"}, status=401,
                                 headers={"WWW-Authenticate": challenge})

    async def login(self, req: web.Request) -> web.StreamResponse:
        if not self._token_ok(req.query.get("token", "")):
            return web.json_response({"error": "bad token"}, status=401)
        sid = secrets.token_urlsafe(32)
        now = self.clock()
        self.sessions = {s: t for s, t in self.sessions.items() if t > now}
        self.sessions[sid] = now + DEFAULT_SESSION_TTL_S
        resp = web.HTTPFound("/")
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
        if name not in {"app.js", "style.css"}:
            raise web.HTTPNotFound()
        return web.FileResponse(WEB_DIR / name)

    # ---- API -------------------------------------------------------------------------------------------
    def _json(self, data: Any) -> web.Response:
        return web.json_response(data, dumps=lambda d: json.dumps(d, separators=(",", ":")))

    async def api_meters(self, _req: web.Request) -> web.Response:
        now_ms = int(self.clock() * 1000)
        return self._json({"now_ms": now_ms,
                           "meters": fleet.meters_overview(self.conn, self.registry.snapshot(), now_ms),
                           "rejections_by_reason": fleet.rejection_counts(self.conn),
                           "outbox": self._outbox_stats(now_ms)})

    def _outbox_stats(self, now_ms: int) -> dict[str, Any]:
        counts = dict(self.conn.execute("SELECT status, COUNT(*) FROM outbox GROUP BY status").fetchall())
        oldest = self.conn.execute("SELECT MIN(created_at_ms) FROM outbox WHERE status IN ('pending','sent')"
                                   ).fetchone()[0]
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
        overview = fleet.meters_overview(self.conn, {mid: meters[mid]}, now_ms)[0]
        return self._json({"now_ms": now_ms, "meter": overview,
                           "readings": fleet.meter_readings(self.conn, mid),
                           "intervals": fleet.meter_intervals(self.conn, mid),
                           "gaps": fleet.gaps(self.conn, mid),
                           "rejections": fleet.rejections(self.conn, mid, 50)})

    async def api_rejections(self, req: web.Request) -> web.Response:
        meter = req.query.get("meter") or None
        return self._json({"rejections": fleet.rejections(self.conn, meter)})

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
                v = (self.conn.execute("PRAGMA data_version").fetchone()[0], self.registry.data_version())
                if v != version:
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
