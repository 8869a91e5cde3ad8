// gridmeter fleet dashboard: plain JS, no build step, no CDN. Text goes in with textContent only.
"use strict";

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return e;
}
const fmtTime = (ms) => (ms == null ? "–" : new Date(ms).toISOString().replace("T", " ").slice(0, 19) + "Z");
const fmtNum = (n) => (n == null ? "–" : Number(n).toLocaleString("en-US"));
const fmtLag = (s) => (s == null ? "–" : s < 120 ? s + " s" : s < 7200 ? Math.round(s / 60) + " min" : Math.round(s / 3600) + " h");
const num = (v) => el("td", { class: "num" }, fmtNum(v));

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin" });
  if (!r.ok) throw new Error(url + ": HTTP " + r.status);
  return r.json();
}

function fillRejections(tbody, rows) {
  tbody.replaceChildren(...rows.map((r) => el("tr", { "data-reason": r.reason },
    el("td", {}, fmtTime(r.received_at_ms)), el("td", {}, r.source), el("td", {}, r.topic_meter_id || "–"),
    el("td", {}, r.meter_id || "–"), num(r.seq), el("td", { class: "reason" }, r.reason),
    el("td", {}, r.detail))));
}

function card(label, value) { return el("div", { class: "card" }, el("b", {}, value), label); }

async function renderFleet() {
  const [data, rej] = await Promise.all([getJSON("/api/meters"), getJSON("/api/rejections")]);
  const total = data.meters.length;
  const active = data.meters.filter((m) => m.status === "active").length;
  const rejected = Object.values(data.rejections_by_reason).reduce((a, b) => a + b, 0);
  document.getElementById("summary").replaceChildren(
    card("meters", total), card("active", active), card("rejected readings", rejected),
    card("outbox pending", fmtNum((data.outbox.counts.pending || 0) + (data.outbox.counts.sent || 0))),
    card("oldest unconfirmed", fmtLag(data.outbox.oldest_age_s)),
    card("confirmed on chain", fmtNum(data.outbox.counts.confirmed || 0)));
  document.querySelector("#meters tbody").replaceChildren(...data.meters.map((m) => el("tr", { "data-meter": m.meter_id },
    el("td", {}, el("a", { href: "/meter/" + encodeURIComponent(m.meter_id) }, m.meter_id)),
    el("td", { class: "status-" + m.status }, m.status), el("td", {}, m.role), num(m.zone_id),
    el("td", {}, fmtTime(m.last_read_at_ms)), el("td", {}, fmtLag(m.lag_s)), el("td", {}, fmtTime(m.last_seen_ms)),
    num(m.import_wh), num(m.export_wh), num(m.accepted), num(m.held), num(m.rejected), num(m.missing),
    num(m.chain.confirmed || 0), num((m.chain.pending || 0) + (m.chain.sent || 0)), num(m.chain.held || 0))));
  fillRejections(document.querySelector("#rejections tbody"), rej.rejections);
}

function chart(readings) {
  const NS = "http://www.w3.org/2000/svg";
  const box = document.getElementById("chart");
  if (readings.length < 2) { box.replaceChildren(el("p", {}, "Not enough readings for a chart yet.")); return; }
  const W = 1000, H = 280, P = 50;
  const t0 = readings[0].read_at_ms, t1 = readings[readings.length - 1].read_at_ms;
  const series = [["import_wh", "#1f6fb2", "import Wh"], ["export_wh", "#2e8b57", "export Wh"]];
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.setAttribute("preserveAspectRatio", "none");
  for (const [key, color] of series) {
    const vals = readings.map((r) => r[key]);
    const lo = Math.min(...vals), hi = Math.max(...vals), span = hi - lo || 1;
    const pts = readings.map((r) => {
      const x = P + ((r.read_at_ms - t0) / (t1 - t0 || 1)) * (W - 2 * P);
      const y = H - P - ((r[key] - lo) / span) * (H - 2 * P);
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    const line = document.createElementNS(NS, "polyline");
    line.setAttribute("points", pts.join(" "));
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", color);
    line.setAttribute("stroke-width", "2");
    line.setAttribute("data-series", key);
    svg.append(line);
  }
  const label = (x, y, text) => {
    const t = document.createElementNS(NS, "text");
    t.setAttribute("x", x); t.setAttribute("y", y); t.setAttribute("font-size", "12"); t.textContent = text;
    svg.append(t);
  };
  label(P, H - 10, fmtTime(t0));
  label(W - P - 150, H - 10, fmtTime(t1));
  const legend = el("div", { class: "legend" }, ...series.map(([key, color, name]) => {
    const vals = readings.map((r) => r[key]);
    return el("span", { style: "color:" + color }, `${name}: ${fmtNum(Math.min(...vals))} → ${fmtNum(Math.max(...vals))}`);
  }));
  box.replaceChildren(svg, legend);
}

async function renderMeter() {
  const id = decodeURIComponent(location.pathname.split("/").pop());
  const data = await getJSON("/api/meters/" + encodeURIComponent(id));
  const m = data.meter;
  document.getElementById("title").textContent = m.meter_id;
  document.title = "gridmeter " + m.meter_id;
  document.getElementById("facts").replaceChildren(
    card("status", m.status), card("role", m.role), card("zone", m.zone_id), card("rated W", fmtNum(m.rated_max_power_w)),
    card("last reading", fmtTime(m.last_read_at_ms)), card("lag", fmtLag(m.lag_s)), card("last seq", fmtNum(m.last_seq)),
    card("import Wh", fmtNum(m.import_wh)), card("export Wh", fmtNum(m.export_wh)),
    card("confirmed produced Wh", fmtNum(m.chain.confirmed_produced_wh || 0)),
    card("confirmed consumed Wh", fmtNum(m.chain.confirmed_consumed_wh || 0)), card("missing seq", fmtNum(m.missing)));
  chart(data.readings.filter((r) => r.status === "accepted"));
  document.querySelector("#intervals tbody").replaceChildren(...data.intervals.map((i) => el("tr", {},
    el("td", {}, fmtTime(i.reading_timestamp * 1000)), num(i.produced_wh), num(i.consumed_wh), el("td", {}, i.status),
    el("td", { class: "reason" }, i.reason || ""), el("td", {}, i.source),
    el("td", {}, i.signature ? i.signature.slice(0, 16) + "…" : ""))));
  fillRejections(document.querySelector("#rejections tbody"), data.rejections);
  document.querySelector("#gaps tbody").replaceChildren(...data.gaps.map((g) => el("tr", {},
    num(g.first_seq), num(g.last_seq), el("td", {}, fmtTime(g.detected_at_ms)))));
}

const render = document.body.dataset.page === "meter" ? renderMeter : renderFleet;
let busy = false;
async function refresh() {
  if (busy) return;
  busy = true;
  try {
    await render();
    document.getElementById("updated").textContent = "updated " + fmtTime(Date.now());
    document.body.dataset.loaded = "1";
  } catch (e) {
    document.getElementById("updated").textContent = "error: " + e.message;
  } finally { busy = false; }
}
refresh();
const live = document.getElementById("live");
const es = new EventSource("/api/events");
es.addEventListener("update", refresh);
es.onopen = () => { live.textContent = "live"; live.className = "badge ok"; };
es.onerror = () => { live.textContent = "reconnecting"; live.className = "badge bad"; };
