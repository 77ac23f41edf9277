"""The operators' dashboard: one HTML page, served on ``/dashboard`` of ``metrics_port``.

Plain HTML with inline JavaScript and CSS: no build step, no external asset. Every
second it fetches ``/metrics`` (same origin), parses the Prometheus text format and
shows connections by subprotocol, message rates in and out (per second, from the
counters' deltas), the store-append latency percentiles p50/p90/p99 (interpolated in the
histogram's buckets, as Prometheus' ``histogram_quantile`` does), breaker states,
slow-consumer closes, outbox bytes and event-loop lag. Each value sits in an element
with an ``id`` (``conn-total``, ``rate-in``, ``msgs-in-total``...) so tests can read it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["DASHBOARD_HTML"]

DASHBOARD_HTML: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>BlueWren node</title>
<style>
body { font: 14px system-ui, sans-serif; margin: 1.5em; background: #f6f8fa; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .6em; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(15em, 1fr)); gap: .8em; }
.card { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: .8em; }
.card h2 { font-size: .85em; text-transform: uppercase; color: #57606a; margin: 0 0 .4em; }
.big { font-size: 1.8em; font-variant-numeric: tabular-nums; }
table { border-collapse: collapse; width: 100%; }
td { padding: .1em .3em; font-variant-numeric: tabular-nums; }
.closed { color: #1a7f37; } .open { color: #cf222e; font-weight: bold; }
.half_open { color: #9a6700; }
#status { color: #57606a; margin-bottom: .8em; }
#status.error { color: #cf222e; }
</style>
</head>
<body>
<h1>BlueWren node</h1>
<div id="status">connecting...</div>
<div class="grid">
 <div class="card"><h2>Connections</h2><div class="big" id="conn-total">-</div>
  <table id="conn-by-proto"></table></div>
 <div class="card"><h2>Messages in / s</h2><div class="big" id="rate-in">-</div>
  total <span id="msgs-in-total">-</span></div>
 <div class="card"><h2>Deliveries out / s</h2><div class="big" id="rate-out">-</div>
  total <span id="msgs-out-total">-</span></div>
 <div class="card"><h2>Store append latency</h2><table>
  <tr><td>p50</td><td id="lat-p50">-</td></tr>
  <tr><td>p90</td><td id="lat-p90">-</td></tr>
  <tr><td>p99</td><td id="lat-p99">-</td></tr>
  <tr><td>appends</td><td id="lat-count">-</td></tr></table></div>
 <div class="card"><h2>Breakers</h2><table id="breakers"></table></div>
 <div class="card"><h2>Slow-consumer closes</h2><div class="big" id="slow-closes">-</div></div>
 <div class="card"><h2>Outbox bytes</h2><div class="big" id="outbox-bytes">-</div></div>
 <div class="card"><h2>Event-loop lag</h2><div class="big" id="loop-lag">-</div></div>
</div>
<script>
"use strict";
function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\\n")) {
    if (!line || line[0] === "#") continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\\{(.*)\\})?\\s+(\\S+)/);
    if (!m) continue;
    const labels = {};
    if (m[3]) {
      const re = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\\]|\\\\.)*)"/g;
      let l;
      while ((l = re.exec(m[3])) !== null) labels[l[1]] = l[2];
    }
    out.push({name: m[1], labels: labels, value: parseFloat(m[4])});
  }
  return out;
}
function one(samples, name) {
  const s = samples.find(x => x.name === name);
  return s ? s.value : NaN;
}
function quantile(q, buckets) {
  if (!buckets.length) return NaN;
  buckets.sort((a, b) => a.le - b.le);
  const total = buckets[buckets.length - 1].count;
  if (!total) return NaN;
  const rank = q * total;
  let prevLe = 0, prevCount = 0;
  for (const b of buckets) {
    if (b.count >= rank) {
      if (b.le === Infinity) return prevLe;
      if (b.count === prevCount) return b.le;
      return prevLe + (b.le - prevLe) * (rank - prevCount) / (b.count - prevCount);
    }
    prevLe = b.le; prevCount = b.count;
  }
  return prevLe;
}
function ms(v) { return isNaN(v) ? "-" : (v * 1000).toFixed(2) + " ms"; }
function set(id, text) { document.getElementById(id).textContent = text; }
function rows(id, pairs, cls) {
  const t = document.getElementById(id);
  t.textContent = "";
  for (const [k, v] of pairs) {
    const tr = t.insertRow();
    tr.insertCell().textContent = k;
    const td = tr.insertCell();
    td.textContent = v;
    if (cls) td.className = v;
  }
}
let last = null;
async function tick() {
  try {
    const r = await fetch("/metrics", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    const samples = parseMetrics(await r.text());
    const now = performance.now() / 1000;
    const conns = samples.filter(s => s.name === "bluewren_connections");
    set("conn-total", conns.reduce((a, s) => a + s.value, 0));
    rows("conn-by-proto", conns.map(s => [s.labels.subprotocol, s.value]), false);
    const inTotal = one(samples, "bluewren_messages_in_total");
    const outTotal = one(samples, "bluewren_messages_out_total");
    set("msgs-in-total", inTotal);
    set("msgs-out-total", outTotal);
    if (last !== null && now > last.t) {
      const dt = now - last.t;
      set("rate-in", ((inTotal - last.inTotal) / dt).toFixed(1));
      set("rate-out", ((outTotal - last.outTotal) / dt).toFixed(1));
    }
    last = {t: now, inTotal: inTotal, outTotal: outTotal};
    const buckets = samples
      .filter(s => s.name === "bluewren_store_append_seconds_bucket")
      .map(s => ({le: s.labels.le === "+Inf" ? Infinity : parseFloat(s.labels.le),
                  count: s.value}));
    set("lat-p50", ms(quantile(0.5, buckets)));
    set("lat-p90", ms(quantile(0.9, buckets)));
    set("lat-p99", ms(quantile(0.99, buckets)));
    set("lat-count", one(samples, "bluewren_store_append_seconds_count"));
    const br = samples.filter(s => s.name === "bluewren_breaker_state" && s.value === 1);
    rows("breakers", br.map(s => [s.labels.breaker, s.labels.state]), true);
    set("slow-closes", one(samples, "bluewren_slow_consumer_closes_total"));
    set("outbox-bytes", one(samples, "bluewren_outbox_bytes"));
    set("loop-lag", ms(one(samples, "bluewren_event_loop_lag_seconds")));
    const st = document.getElementById("status");
    st.className = "";
    st.textContent = "updated " + new Date().toISOString();
  } catch (e) {
    const st = document.getElementById("status");
    st.className = "error";
    st.textContent = "cannot read /metrics: " + e;
  }
}
tick();
setInterval(tick, 1000);
</script>
</body>
</html>
"""
