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
// Times: ISO 8601 UTC, with the age relative to the server's clock (now_ms of the answer), not the browser's.
let serverNow = Date.now();
const iso = (ms) => new Date(ms).toISOString().slice(0, 19) + "Z";
const fmtAge = (s) => (s == null ? "–" : s < 10 && s % 1 ? s.toFixed(1) + " s" : s < 120 ? Math.floor(s) + " s" : s < 7200 ? Math.floor(s / 60) + " min"
  : s < 172800 ? Math.floor(s / 3600) + " h" : Math.floor(s / 86400) + " d");
const fmtTime = (ms) => (ms == null ? "–" : iso(ms));
const fmtNum = (n) => (n == null ? "–" : Number(n).toLocaleString("en-US"));
const num = (v) => el("td", { class: "num" }, fmtNum(v));
function when(ms) {  // a cell: ISO time, and "(25 s ago)" under it
  if (ms == null) return el("td", {}, "never");
  const age = (serverNow - ms) / 1000;
  return el("td", { class: "when", title: iso(ms) }, el("span", {}, iso(ms)),
    el("small", {}, age >= 0 ? fmtAge(Math.floor(age)) + " ago" : "in " + fmtAge(Math.floor(-age))));
}
const STATE_TEXT = { ok: "OK", late: "Late", silent: "Silent", held: "Held", rejecting: "Rejecting", new: "New",
  suspended: "Suspended", retired: "Retired" };
function stateCell(m) {
  const reason = m.state_reason ? ": " + m.state_reason : "";
  return el("td", { class: "state", title: m.state_text },
    el("span", { class: "pill state-" + m.state }, STATE_TEXT[m.state] + reason));
}

async function getJSON(url) {
  const r = await fetch(url, { credentials: "same-origin" });
  if (r.status === 401) { location.href = "/login?next=" + encodeURIComponent(location.pathname); throw new Error("signed out"); }
  if (!r.ok) throw new Error(url + ": HTTP " + r.status + " " + (await r.text()));
  return r.json();
}

function fillRejections(tbody, rows) {
  tbody.replaceChildren(...rows.map((r) => el("tr", { "data-reason": r.reason },
    when(r.received_at_ms), el("td", {}, r.source), el("td", {}, r.topic_meter_id || "–"),
    el("td", {}, r.meter_id || "–"), num(r.seq), el("td", { class: "reason" }, r.reason),
    el("td", { class: "detail" }, r.detail))));
}

function fillHeld(tbody, rows, withMeter) {
  tbody.replaceChildren(...rows.map((r) => el("tr", { "data-held-reason": r.reason },
    when(r.received_at_ms), ...(withMeter ? [el("td", {}, el("a", { href: "/meter/" + encodeURIComponent(r.meter_id) }, r.meter_id))] : []),
    num(r.seq), el("td", { class: "reason" }, r.reason), el("td", { class: "detail" }, r.detail || ""),
    el("td", {}, fmtTime(r.read_at_ms)))));
}

function card(label, value, cls, attrs) {
  return el("div", Object.assign({ class: "card " + (cls || "") }, attrs || {}), el("b", {}, value), label);
}

function showBanner(chain) {
  const b = document.getElementById("banner");
  if (chain && chain.banner) {
    b.hidden = false; b.className = "banner banner-" + chain.banner.kind; b.dataset.kind = chain.banner.kind;
    b.textContent = chain.banner.text;
  } else { b.hidden = true; b.dataset.kind = ""; b.textContent = ""; }
}

function chainCards(c, outbox) {
  if (!c.enabled) return [card("chain submission", "off here", "")];
  const rpc = c.rpc_reachable === null ? "not tried yet" : c.rpc_reachable ? "reachable" : "unreachable";
  const errs = Object.entries(c.errors_by_reason || {}).filter(([, n]) => n > 0).map(([k, n]) => k + " " + n).join(", ");
  return [
    card("chain RPC", rpc, c.rpc_reachable === false ? "bad" : c.failing_reason ? "warn" : "good", { id: "chain-rpc" }),
    card("last confirmed submission", c.last_submission_ms == null ? "none yet" : fmtAge(Math.floor((serverNow - c.last_submission_ms) / 1000)) + " ago"),
    card("oldest unconfirmed", fmtAge(c.oldest_unconfirmed_age_s), c.oldest_unconfirmed_age_s > c.epoch_s ? "bad" : ""),
    card("outbox pending", fmtNum((outbox.counts.pending || 0) + (outbox.counts.sent || 0))),
    card("confirmed on chain", fmtNum(outbox.counts.confirmed || 0)),
    card("submission errors", errs || "none"),
  ];
}

const params = new URLSearchParams(location.search);
let page = Number(params.get("page") || 1);
function query() {
  const q = new URLSearchParams();
  const v = (id) => document.getElementById(id);
  if (v("q").value) q.set("q", v("q").value);
  if (v("state").value) q.set("state", v("state").value);
  q.set("sort", v("sort").value);
  if (v("desc").checked) q.set("order", "desc");
  if (page > 1) q.set("page", page);
  history.replaceState(null, "", "/?" + q.toString());
  return q;
}

async function renderFleet() {
  const q = query();
  const [data, rej, held] = await Promise.all([getJSON("/api/meters?" + q), getJSON("/api/rejections"),
    getJSON("/api/held")]);
  serverNow = data.now_ms;
  showBanner(data.chain);
  const stateSel = document.getElementById("state");
  document.getElementById("states").replaceChildren(card("meters", fmtNum(data.total), "", { "data-state": "" }),
    ...Object.entries(data.counts).map(([s, n]) => card(STATE_TEXT[s], fmtNum(n), "state-" + s + (n ? "" : " zero")
      + (stateSel.value === s ? " chosen" : ""), { "data-state": s, title: "show only " + s + " meters" })));
  document.getElementById("chain").replaceChildren(...chainCards(data.chain, data.outbox));
  document.getElementById("matched").textContent = data.matched === data.total ? "" : `(${fmtNum(data.matched)} match)`;
  document.getElementById("pageinfo").textContent = `page ${data.page} of ${data.pages}`;
  document.getElementById("prev").disabled = data.page <= 1;
  document.getElementById("next").disabled = data.page >= data.pages;
  document.querySelector("#meters tbody").replaceChildren(...data.meters.map((m) => el("tr", { "data-meter": m.meter_id, "data-state": m.state },
    el("td", {}, el("a", { href: "/meter/" + encodeURIComponent(m.meter_id) }, m.meter_id)),
    stateCell(m), num(m.zone_id), when(m.last_seen_ms), el("td", { class: "num" }, fmtAge(m.lag_s)),
    el("td", { class: "num" }, fmtAge(m.expected_interval_s)),
    num(m.import_wh), num(m.export_wh), num(m.accepted), num(m.held), num(m.rejected), num(m.missing),
    num(m.chain.confirmed || 0), num((m.chain.pending || 0) + (m.chain.sent || 0)), num(m.chain.held || 0))));
  fillHeld(document.querySelector("#held tbody"), held.readings.slice(0, 50), true);
  document.querySelector("#held-intervals tbody").replaceChildren(...held.intervals.slice(0, 50).map((i) =>
    el("tr", { "data-held-reason": (i.reason || "").split(":")[0] }, when(i.updated_at_ms),
      el("td", {}, el("a", { href: "/meter/" + encodeURIComponent(i.meter_id) }, i.meter_id)),
      el("td", {}, fmtTime(i.reading_timestamp * 1000)), num(i.produced_wh), num(i.consumed_wh),
      el("td", { class: "reason detail" }, i.reason || ""))));
  fillRejections(document.querySelector("#rejections tbody"), rej.rejections);
}

function setupFleet() {
  const sel = document.getElementById("state");
  for (const s of Object.keys(STATE_TEXT)) sel.append(el("option", { value: s }, STATE_TEXT[s]));
  for (const [id, key] of [["q", "q"], ["state", "state"], ["sort", "sort"]]) {
    if (params.get(key)) document.getElementById(id).value = params.get(key);
  }
  document.getElementById("desc").checked = params.get("order") === "desc";
  const again = () => { page = 1; refresh(); };
  for (const id of ["state", "sort", "desc"]) document.getElementById(id).addEventListener("change", again);
  document.getElementById("q").addEventListener("input", again);
  document.getElementById("controls").addEventListener("submit", (e) => { e.preventDefault(); again(); });
  document.getElementById("prev").addEventListener("click", () => { page = Math.max(1, page - 1); refresh(); });
  document.getElementById("next").addEventListener("click", () => { page += 1; refresh(); });
  document.querySelector("#meters thead").addEventListener("click", (e) => {  // sortable headers
    const th = e.target.closest("th[data-sort]");
    if (!th) return;
    const sortSel = document.getElementById("sort"), desc = document.getElementById("desc");
    desc.checked = sortSel.value === th.dataset.sort ? !desc.checked : false;
    sortSel.value = th.dataset.sort;
    again();
  });
  document.getElementById("states").addEventListener("click", (e) => {
    const c = e.target.closest(".card");
    if (!c) return;
    sel.value = sel.value === c.dataset.state ? "" : c.dataset.state;
    again();
  });
}

function chart(readings) {
  const NS = "http://www.w3.org/2000/svg";
  const box = document.getElementById("chart");
  if (readings.length < 2) { box.replaceChildren(el("p", {}, "Not enough accepted readings for a chart yet.")); return; }
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
  serverNow = data.now_ms;
  showBanner(data.chain);
  const m = data.meter;
  document.getElementById("title").textContent = m.meter_id;
  document.title = "gridmeter " + m.meter_id;
  const health = document.getElementById("health");
  health.replaceChildren(el("span", { class: "pill state-" + m.state }, STATE_TEXT[m.state] + (m.state_reason ? ": " + m.state_reason : "")),
    " " + m.state_text);
  health.dataset.state = m.state;
  const ago = (ms) => (ms == null ? "never" : iso(ms) + " (" + fmtAge(Math.floor((serverNow - ms) / 1000)) + " ago)");
  document.getElementById("facts").replaceChildren(
    card("registry status", m.status), card("role", m.role), card("zone", m.zone_id),
    card("rated W", fmtNum(m.rated_max_power_w)), card("expected every", fmtAge(m.expected_interval_s)),
    card("last seen", ago(m.last_seen_ms), "wide"), card("newest reading (meter clock)", ago(m.newest_read_at_ms), "wide"),
    card("last accepted reading", fmtTime(m.last_read_at_ms), "wide"), card("last seq", fmtNum(m.last_seq)),
    card("accepted", fmtNum(m.accepted)), card("held", fmtNum(m.held), m.held ? "warn" : ""),
    card("rejected", fmtNum(m.rejected), m.rejected ? "bad" : ""), card("missing seq", fmtNum(m.missing)),
    card("import Wh", fmtNum(m.import_wh)), card("export Wh", fmtNum(m.export_wh)),
    card("confirmed produced Wh", fmtNum(m.chain.confirmed_produced_wh || 0)),
    card("confirmed consumed Wh", fmtNum(m.chain.confirmed_consumed_wh || 0)));
  chart(data.readings.filter((r) => r.status === "accepted"));
  fillHeld(document.querySelector("#held tbody"), data.held, false);
  document.querySelector("#intervals tbody").replaceChildren(...data.intervals.map((i) => el("tr", {},
    when(i.reading_timestamp * 1000), num(i.produced_wh), num(i.consumed_wh), el("td", {}, i.status),
    el("td", { class: "reason" }, i.reason || ""), el("td", {}, i.source),
    el("td", {}, i.signature ? i.signature.slice(0, 16) + "…" : ""))));
  fillRejections(document.querySelector("#rejections tbody"), data.rejections);
  document.querySelector("#gaps tbody").replaceChildren(...data.gaps.map((g) => el("tr", {},
    num(g.first_seq), num(g.last_seq), when(g.detected_at_ms))));
}

const isMeter = document.body.dataset.page === "meter";
const render = isMeter ? renderMeter : renderFleet;
if (!isMeter) setupFleet();
let busy = false, again = false;
async function refresh() {
  if (busy) { again = true; return; }
  busy = true;
  try {
    await render();
    document.getElementById("updated").textContent = "updated " + fmtTime(Date.now());
    document.body.dataset.loaded = "1";
    if (!document.body.dataset.loadedAt) document.body.dataset.loadedAt = String(Math.round(performance.now()));
    document.body.dataset.renders = String(Number(document.body.dataset.renders || 0) + 1);
  } catch (e) {
    document.getElementById("updated").textContent = "error: " + e.message;
  } finally {
    busy = false;
    if (again) { again = false; refresh(); }
  }
}
refresh();
const live = document.getElementById("live");
const es = new EventSource("/api/events");
es.addEventListener("update", refresh);
es.onopen = () => { live.textContent = "live"; live.className = "badge ok"; };
es.onerror = () => { live.textContent = "reconnecting"; live.className = "badge bad"; };
