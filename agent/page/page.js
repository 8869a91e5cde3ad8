"use strict";
// The household page: polls the agent's own /health (same origin) every few seconds. No external assets.
const REFRESH_MS = 5000;

function kwh(wh) {
  return wh === null || wh === undefined ? "-" : (wh / 1000).toFixed(3) + " kWh";
}
function ago(ms, now) {
  if (ms === null || ms === undefined) return "never";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 90) return s + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 172800) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " days ago";
}
function clockTime(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}
function text(root, sel, value) {
  root.querySelector(sel).textContent = value;
}

function meterCard(id, dev, home, chain, chainOn, waiting, now) {
  const card = document.getElementById("meter-card").content.firstElementChild.cloneNode(true);
  card.dataset.meter = id;
  text(card, ".meter-id", id);
  const p = home ? home.power_w : null;
  text(card, ".power-value", p === null || p === undefined ? "-" : Math.abs(p) + " W");
  text(card, ".power-dir", p === null || p === undefined ? "" : p >= 0 ? "from the grid" : "to the grid");
  if (home) {
    text(card, ".today-label", home.today_from_midnight ? "Today" : "Today (since " + clockTime(home.today_since_ms) + ")");
    text(card, ".today-import", kwh(home.today_import_wh));
    text(card, ".today-export", kwh(home.today_export_wh));
    text(card, ".reg-import", kwh(home.import_wh));
    text(card, ".reg-export", kwh(home.export_wh));
  }
  if (!chainOn) {
    card.querySelector(".chain-row").hidden = true;
  } else if (chain) {
    text(card, ".chain-import", kwh(chain.total_consumed_wh));
    text(card, ".chain-export", kwh(chain.total_produced_wh));
    text(card, ".chain-note", chain.submissions + " submissions confirmed on chain, the last for the reading of " +
      new Date(chain.last_reading_s * 1000).toLocaleString() +
      ". On-chain totals count from the gateway's first reading of this meter; the open interval follows when its market period closes.");
  } else {
    text(card, ".chain-note", "Nothing confirmed on chain yet for this meter (the first interval is submitted when its market period closes).");
  }
  const state = dev.consecutive_errors ? "Not answering: " + (dev.last_error || "no answer") : "Read " + ago(dev.last_read_ms, now);
  text(card, ".meter-state", state + " · " + (waiting || 0) + " readings waiting for the gateway's confirmation");
  return card;
}

function render(h) {
  const now = h.now_ms;
  const ok = h.status === "ok";
  const overall = document.getElementById("overall");
  overall.textContent = ok ? "Everything works." : "Needs attention: see below.";
  overall.className = "state " + (ok ? "ok" : "bad");
  const problems = h.problems || [];
  document.getElementById("problems").hidden = problems.length === 0;
  const list = document.getElementById("problem-list");
  list.replaceChildren(...problems.map((p) => { const li = document.createElement("li"); li.textContent = p; return li; }));
  const chain = h.chain || null;
  const meters = document.getElementById("meters");
  meters.replaceChildren(...Object.keys(h.devices).sort().map((id) =>
    meterCard(id, h.devices[id], (h.household || {})[id], chain && chain.meters ? chain.meters[id] : null, chain !== null,
      (h.queue.per_meter || {})[id], now)));
  text(document, "#last-read", ago(h.last_read_ms, now));
  text(document, "#last-publish", ago(h.last_publish_ms, now));
  text(document, "#last-ack", ago(h.last_ack_ms, now));
  const q = h.queue;
  text(document, "#buffer", q.depth + " readings" + (q.oldest_read_at_ms ? " (oldest from " + ago(q.oldest_read_at_ms, now) + ")" : ""));
  text(document, "#clock", h.clock.synced ? "synchronised (" + h.clock.source + ")" : "NOT synchronised: readings are held");
  text(document, "#chain-source", chain === null ? "not configured ([status] chain_rpc_url)" :
    chain.error ? "cannot read the chain: " + chain.error : chain.fetched_at_ms ? "read " + ago(chain.fetched_at_ms, now) + " from " + chain.rpc_url : "not read yet");
  text(document, "#updated", new Date(now).toLocaleTimeString());
  document.body.dataset.loaded = "1";
}

async function refresh() {
  try {
    const r = await fetch("/health", { cache: "no-store" });
    render(await r.json());
  } catch (e) {
    const overall = document.getElementById("overall");
    overall.textContent = "The agent does not answer (" + e + "). Is it running? sudo systemctl status gridmeter-agent";
    overall.className = "state bad";
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
