// gpuledger showback page: plain JS + SVG, no build step. Reads /v1/whoami, /v1/showback (a view and its
// trend), /v1/efficiency/top-wasters, /v1/efficiency/idle-gpus, /v1/drilldown, /v1/economics (admin and
// finance), /v1/queues and /v1/units (the month of the period's end) and the CSV files with the
// token the user gives (URL fragment #token=... or the form), kept in sessionStorage for this tab only;
// the fragment never reaches the server or its logs.
//
// Drill-down: a row's next level is its API row's `drilldown` URL (its keys, period and filters) read as
// filters for the next view: tenant -> namespace -> pod -> GPU -> its hours -> the ledger rows of one hour
// (the hour row's drilldown URL itself: /v1/drilldown).
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const KINDS = [["used_gpu_hours", "--used", "used"], ["allocated_idle_gpu_hours", "--idle", "allocated idle"],
               ["unmeasured_gpu_hours", "--unmeasured", "unmeasured"],
               ["unallocated_gpu_hours", "--unallocated", "unallocated"]];
const NEXT = { tenant: "namespace", namespace: "pod", workload: "pod", pod: "gpu", gpu: "hours", hours: "intervals",
               model: "tenant", cluster: "tenant" };
const NAMES = { tenant: "tenant", namespace: "namespace", model: "GPU model", workload: "workload", pod: "pod",
                cluster: "cluster", gpu: "GPU", hours: "hour", intervals: "ledger rows" };
const FILTER_KEYS = ["tenant", "namespace", "node", "model", "sharing", "pod", "workload", "gpu", "cluster"];
let role = null;
let state = { crumbs: [] };  // crumbs: [{label, view, filters}], the last one is shown
let shown = null;            // the answer on screen, for the CSV link

function token() {
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem("gpuledger-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("gpuledger-token");
}

async function api(path) {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  const r = await fetch(path, { headers });
  if (!r.ok) {
    let e = { code: "http_" + r.status, message: r.statusText, hint: "" };
    try { e = (await r.json()).error; } catch (_) { /* not JSON */ }
    const err = new Error("error: " + e.message + (e.hint ? "\nhint: " + e.hint : ""));
    err.status = r.status;
    throw err;
  }
  return r;
}

function el(name, attrs, text) {
  const n = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}
function node(tag, attrs, text) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}
function color(v) { return getComputedStyle(document.documentElement).getPropertyValue(v).trim(); }

const h = (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(2));
const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(0) + " %");
const money = (v, cur) => (v === null || v === undefined ? "–" : `${v} ${cur}`);
const day = (d) => d.toISOString().slice(0, 10);
const addDays = (d, n) => new Date(d.getTime() + n * 86400000);

// --- period ----------------------------------------------------------------------------------
function period() {
  const now = new Date();
  const today = new Date(Date.UTC(now.getUTCFullYear(), now.getUTCMonth(), now.getUTCDate()));
  const first = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), 1));
  switch ($("preset").value) {
    case "today": return { start: day(today), end: day(addDays(today, 1)) };
    case "last7": return { start: day(addDays(today, -6)), end: day(addDays(today, 1)) };
    case "last30": return { start: day(addDays(today, -29)), end: day(addDays(today, 1)) };
    case "this-month":
      return { start: day(first), end: day(new Date(Date.UTC(first.getUTCFullYear(), first.getUTCMonth() + 1, 1))) };
    case "last-month":
      return { start: day(new Date(Date.UTC(first.getUTCFullYear(), first.getUTCMonth() - 1, 1))), end: day(first) };
    case "custom": {
      const s = $("start").value, e = $("end").value;
      if (!s || !e) throw new Error("error: give both dates of the custom range\nhint: From and To are UTC days, To included");
      return { start: s, end: day(addDays(new Date(e + "T00:00:00Z"), 1)) };  // To is inclusive on screen
    }
    default: return {};  // the API's latest month with data
  }
}

function params(extra) {
  const p = new URLSearchParams();
  const per = state.period;
  if (per.start) { p.set("start", per.start); p.set("end", per.end); }
  const f = current().filters;
  for (const k of FILTER_KEYS) if (f[k] !== undefined) p.append(k, f[k]);
  for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
  return p;
}

// Who pays for idle (holder, share_unallocated, platform): the showback answers under it.
function policy() { return $("idle-policy").value; }

function current() { return state.crumbs[state.crumbs.length - 1]; }

function viewDim(view) {
  if (view === "hours") return "gpu";  // the GPU's line per hour (granularity=hour)
  return view === "label" ? "label:" + ($("label-key").value.trim() || "team") : view;
}

function granularity(per, data) {
  const days = (Date.parse(per.end) - Date.parse(per.start)) / 86400000;
  const spanDays = data && data.first ? (Date.parse(data.last) - Date.parse(data.first)) / 86400000 : days;
  if (spanDays <= 3 && days <= 80) return "hour";
  return days <= 400 ? "day" : "month";
}

// --- rendering ---------------------------------------------------------------------------------
function fmtTime(iso) { return iso.replace("T", " ").replace(/:00Z$/, "").replace("Z", ""); }

function notice(body) {
  const d = body.data, n = $("notice");
  const total = Math.round(d ? d.period_hours : 0);
  n.classList.remove("full");
  if (!d || !d.first) { n.textContent = "No data in this period."; return; }
  const hours = d.hours_with_data;
  const amount = hours >= 48 ? `${(hours / 24).toFixed(hours % 24 ? 1 : 0)} days` : `${hours} hour${hours === 1 ? "" : "s"}`;
  if (hours >= total) n.classList.add("full");
  n.textContent = hours >= total
    ? `Data covers the whole period (${amount}).`
    : `Data covers ${amount} of this period's ${total >= 48 ? (total / 24).toFixed(0) + " days" : total + " hours"}: `
      + `${fmtTime(d.first)} – ${fmtTime(d.last)} UTC.`;
}

function heading(body) {
  const s = body.period.start.slice(0, 10);
  const e = day(addDays(new Date(body.period.end), -1 / 86400));  // the last day included
  const view = current().view;
  $("heading").textContent = `${view === "intervals" ? "Ledger rows" : "By " + (NAMES[view] || viewDim(view))}: `
    + `${s === e ? s : s + " – " + e} (UTC)`;
}

function crumbs() {
  const ol = $("crumbs");
  ol.replaceChildren(...state.crumbs.map((c, i) => {
    const li = node("li");
    if (i === state.crumbs.length - 1) { li.appendChild(node("span", { "aria-current": "page" }, c.label)); }
    else {
      const b = node("button", { type: "button" }, c.label);
      b.addEventListener("click", () => {
        document.body.dataset.ready = "";
        state.crumbs = state.crumbs.slice(0, i + 1);
        show();
      });
      li.appendChild(b);
    }
    return li;
  }));
}

function cards(body) {
  const rows = body.rows, cur = body.currency;
  const sum = (k) => rows.reduce((a, r) => a + (r[k] || 0), 0);
  const used = sum("used_gpu_hours"), idle = sum("allocated_idle_gpu_hours");
  const idleCost = rows.reduce((a, r) => a + Number(r.idle_cost), 0);
  const items = [["Cost", money(body.total_cost, cur)], ["Idle cost", `${idleCost.toFixed(2)} ${cur}`],
                 ["Used GPU-h", h(used)], ["Efficiency", used + idle > 0 ? pct(used / (used + idle)) : "–"]];
  $("cards").replaceChildren(...items.map(([k, v]) => {
    const d = node("div", { class: "card" }, k);
    d.appendChild(node("b", { "data-card": k }, v));
    return d;
  }));
}

// Stacked bars, one per time bucket: used, allocated idle, unmeasured, unallocated (GPU-hours).
function trend(body, gran) {
  const svg = $("chart-trend");
  svg.replaceChildren();
  const byTime = new Map();
  for (const r of body.rows) {
    const t = byTime.get(r.time) || Object.fromEntries(KINDS.map(([k]) => [k, 0]));
    for (const [k] of KINDS) t[k] += r[k] || 0;
    byTime.set(r.time, t);
  }
  const times = [...byTime.keys()].sort();
  const W = 800, H = 220, left = 44, bottom = 24, top = 8;
  const max = Math.max(1e-9, ...times.map((t) => KINDS.reduce((a, [k]) => a + byTime.get(t)[k], 0)));
  const bw = (W - left - 8) / Math.max(1, times.length);
  const scale = (H - top - bottom) / max;
  svg.appendChild(el("text", { x: left - 4, y: top + 8, "text-anchor": "end" }, max.toFixed(1)));
  svg.appendChild(el("text", { x: left - 4, y: H - bottom, "text-anchor": "end" }, "0"));
  svg.appendChild(el("line", { x1: left, x2: W, y1: H - bottom, y2: H - bottom, stroke: "#999" }));
  const every = Math.ceil(times.length / 8);
  times.forEach((t, i) => {
    let y = H - bottom;
    const x = left + i * bw;
    const g = el("g", { "data-time": t });
    for (const [k, cssVar, label] of KINDS) {
      const v = byTime.get(t)[k];
      const hgt = v * scale;
      if (hgt <= 0) continue;
      y -= hgt;
      const rect = el("rect", { x: (x + 1).toFixed(2), y: y.toFixed(2), width: Math.max(1, bw - 2).toFixed(2),
                                height: hgt.toFixed(2), fill: color(cssVar), "data-kind": k });
      rect.appendChild(el("title", {}, `${fmtTime(t)} ${label}: ${h(v)} GPU-h`));
      g.appendChild(rect);
    }
    svg.appendChild(g);
    if (i % every === 0) {
      const label = gran === "hour" ? t.slice(11, 16) : gran === "day" ? t.slice(5, 10) : t.slice(0, 7);
      svg.appendChild(el("text", { x: x + bw / 2, y: H - 8, "text-anchor": "middle" }, label));
    }
  });
  $("chart-caption").textContent = `GPU-hours per ${gran}: used, idle and unallocated`;
}

const COLUMNS = [["used GPU-h", (r) => h(r.used_gpu_hours)], ["idle GPU-h", (r) => h(r.allocated_idle_gpu_hours)],
                 ["unmeasured GPU-h", (r) => h(r.unmeasured_gpu_hours)],
                 ["unallocated GPU-h", (r) => h(r.unallocated_gpu_hours)], ["efficiency", (r) => pct(r.utilization)],
                 ["cost", (r) => money(r.cost, r.currency)], ["idle cost", (r) => money(r.idle_cost, r.currency)],
                 ["energy kWh", (r) => h(r.energy_kwh)], ["coverage", (r) => pct(r.coverage)]];

function headerRow(names) {
  const tr = node("tr");
  for (const n of names) tr.appendChild(node("th", { scope: "col" }, n));
  return tr;
}

function label(v, dim) {
  if (dim === "time" && v) return fmtTime(v);
  if (v !== null && v !== undefined) return String(v);
  return dim === "tenant" || dim === "namespace" || dim === "pod" || dim === "workload" ? "(unallocated)" : "(none)";
}

function table(body) {
  const view = current().view;
  const dim = view === "hours" ? "time" : body.group_by[0];
  $("table-caption").textContent = `GPU-hours, efficiency and cost by ${NAMES[view] || dim}`
    + (NEXT[view] ? ` (choose a row for its ${NAMES[NEXT[view]]})` : "");
  document.querySelector("#table thead").replaceChildren(headerRow([NAMES[view] || dim, ...COLUMNS.map((c) => c[0])]));
  document.querySelector("#table tbody").replaceChildren(...body.rows.map((r) => {
    const tr = node("tr");
    const th = node("th", { scope: "row" });
    const text = label(r[dim], dim);
    if (NEXT[view] && r.drilldown && r[dim] !== null) {
      const b = node("button", { type: "button", class: "name" }, text);
      b.addEventListener("click", () => drill(r, dim, view));
      th.appendChild(b);
      tr.classList.add("drill");
      tr.addEventListener("click", (ev) => { if (ev.target === tr || ev.target.tagName === "TD") b.click(); });
    } else {
      th.textContent = text;
    }
    tr.appendChild(th);
    for (const [, f] of COLUMNS) tr.appendChild(node("td", {}, f(r)));
    return tr;
  }));
  const sum = (k) => body.rows.reduce((a, r) => a + (r[k] || 0), 0);
  const used = sum("used_gpu_hours"), idle = sum("allocated_idle_gpu_hours");
  const idleCost = body.rows.reduce((a, r) => a + Number(r.idle_cost), 0);
  const foot = node("tr");
  for (const v of ["total", h(used), h(idle), h(sum("unmeasured_gpu_hours")), h(sum("unallocated_gpu_hours")),
                   used + idle > 0 ? pct(used / (used + idle)) : "–", money(body.total_cost, body.currency),
                   `${idleCost.toFixed(2)} ${body.currency}`, h(sum("energy_kwh")), ""]) {
    foot.appendChild(node("td", {}, v));
  }
  document.querySelector("#table tfoot").replaceChildren(foot);
}

// The last level: the ledger rows behind one hour of the GPU's line (the drilldown route itself).
function intervalsTable(body) {
  $("table-caption").textContent = "Ledger rows behind this hour (grain: interval, or hour where only rollups remain)";
  const cols = ["interval_start", "interval_end", "kind", "tenant", "pod", "rule", "gpu_seconds"];
  document.querySelector("#table thead").replaceChildren(headerRow(["interval start", "end", "kind", "tenant", "pod",
                                                                     "rule", "GPU-seconds"]));
  document.querySelector("#table tbody").replaceChildren(...body.rows.map((r) => {
    const tr = node("tr");
    cols.forEach((c, i) => {
      const v = r[c] === null || r[c] === undefined ? "–" : c === "gpu_seconds" ? Number(r[c]).toFixed(1) : String(r[c]);
      tr.appendChild(i === 0 ? node("th", { scope: "row" }, v) : node("td", {}, v));
    });
    return tr;
  }));
  const total = body.rows.reduce((a, r) => a + r.gpu_seconds, 0);
  const foot = node("tr");
  for (const v of [`${body.rows.length} of ${body.total_rows} rows`, "", "", "", "", "total", (total / 3600).toFixed(2) + " GPU-h"]) {
    foot.appendChild(node("td", {}, v));
  }
  document.querySelector("#table tfoot").replaceChildren(foot);
}

function panels(wasters, idle) {
  const cur = wasters.currency;
  const dim = wasters.group_by[0];
  document.querySelector("#wasters thead").replaceChildren(headerRow([NAMES[dim] || dim, "idle GPU-h", "idle cost", "efficiency"]));
  document.querySelector("#wasters tbody").replaceChildren(...wasters.rows.map((r) => {
    const tr = node("tr");
    tr.appendChild(node("th", { scope: "row" }, label(r[dim], dim)));
    for (const v of [h(r.idle_gpu_hours), money(r.idle_cost, cur), pct(r.utilization)]) tr.appendChild(node("td", {}, v));
    return tr;
  }));
  const now = idle.rows.filter((r) => r.ongoing);
  document.querySelector("#idle-now thead").replaceChildren(headerRow(["pod", "tenant", "GPU", "idle since", "hours"]));
  const tbody = document.querySelector("#idle-now tbody");
  tbody.replaceChildren(...now.map((r) => {
    const tr = node("tr");
    tr.appendChild(node("th", { scope: "row" }, r.pod || "–"));
    for (const v of [r.tenant, `${r.cluster}/${r.node} #${r.gpu_index}${r.mig_index >= 0 ? "/" + r.mig_index : ""}`,
                     fmtTime(r.idle_since), r.idle_hours.toFixed(1)]) tr.appendChild(node("td", {}, v));
    return tr;
  }));
  if (!now.length) {
    const tr = node("tr");
    tr.appendChild(node("td", { colspan: "5" }, "none"));
    tbody.appendChild(tr);
  }
}

// Fleet economics per pool (admin and finance tokens; hidden for others) and Kueue quotas per ClusterQueue.
function rowsTable(id, names, rows, cells, empty) {
  document.querySelector(`#${id} thead`).replaceChildren(headerRow(names));
  const tbody = document.querySelector(`#${id} tbody`);
  tbody.replaceChildren(...rows.map((r) => {
    const tr = node("tr");
    cells(r).forEach((v, i) => tr.appendChild(i === 0 ? node("th", { scope: "row" }, v) : node("td", {}, v)));
    return tr;
  }));
  if (!rows.length) {
    const tr = node("tr");
    tr.appendChild(node("td", { colspan: String(names.length) }, empty));
    tbody.appendChild(tr);
  }
}

async function business() {
  const p = new URLSearchParams({ start: state.period.start, end: state.period.end });
  const finance = role === "admin" || role === "finance";
  const [econ, queues, units] = await Promise.all([
    finance ? api("/v1/economics?" + p).then((r) => r.json()) : Promise.resolve(null),
    api("/v1/queues?" + p).then((r) => r.json()),
    api("/v1/units?" + p).then((r) => r.json()),
  ]);
  $("economics-panel").hidden = !econ;
  if (econ) {
    const cur = econ.currency;
    $("economics-note").textContent = `Utilization = used ÷ capacity; owning beats renting above the break-even `
      + `utilization (cloud rates as of ${econ.cloud_rates.as_of}).`;
    rowsTable("economics", ["pool", "GPU model", "cluster", "utilization", "allocation", "efficiency", "cost per used GPU-h",
                            "cloud rate", "break-even"], econ.pools,
              (r) => [r.pool, r.model, r.cluster, pct(r.utilization), pct(r.allocation), pct(r.efficiency),
                      money(r.cost_per_used_gpu_hour, cur), money(r.cloud_rate, cur), pct(r.break_even_utilization)],
              "no GPU capacity in this period");
  }
  $("queues-note").textContent = `${queues.month}, ${queues.resource}: GPU-hours; borrowed above the quota, `
    + "unused quota lent or idle.";
  rowsTable("queues", ["ClusterQueue", "tenant", "quota", "admitted", "used", "borrowed", "unused", "wait p50 s",
                       "wait p95 s"], queues.queues,
            (r) => [r.cluster_queue, r.tenant, h(r.quota_gpu_hours), h(r.reserved_gpu_hours), h(r.used_gpu_hours),
                    h(r.borrowed_gpu_hours), h(r.unused_quota_gpu_hours), h(r.wait_p50_s), h(r.wait_p95_s)],
            "no Kueue data this month (gpuledger units import --kueue)");
  rowsTable("local-queues", ["LocalQueue", "ClusterQueue", "tenant", "admitted", "quota share", "borrowed",
                             "share of quota"], queues.local_queues,
            (r) => [r.local_queue, r.cluster_queue || "(not configured)", r.tenant, h(r.reserved_gpu_hours),
                    h(r.quota_share_gpu_hours), h(r.borrowed_gpu_hours), pct(r.share_of_quota)],
            "no LocalQueue data this month (Kueue's LocalQueueMetrics feature gate)");
  // Per unit (e.g. tokens per 1,000,000), tenant, GPU model and pod: cost, GPU-hours and kWh per `per` units of
  // work, busy time only and including the idle the pod held; a value the API cannot know (no energy) shows "–".
  const ucur = units.currency;
  $("units-note").textContent = `${units.month}: per N units of work (N = "per"); busy = the GPU time the pod used, `
    + "held = including the idle it held; the last two columns are the month's GPU-hours.";
  rowsTable("units", ["unit", "per", "tenant", "GPU model", "pod", "count", "cost per N busy", "cost per N held",
                      "used GPU-h per N", "held GPU-h per N", "kWh per N", "used GPU-h", "held GPU-h"], units.rows,
            (r) => [r.unit, String(r.per), r.tenant || "(unallocated)", r.model || "(none)", r.pod, String(r.count),
                    money(r.cost_per_busy, ucur), money(r.cost_per_held, ucur), r.used_gpu_hours_per ?? "–",
                    r.held_gpu_hours_per ?? "–", r.kwh_per ?? "–",
                    h(r.used_gpu_hours), h(r.held_gpu_hours)],
            "no work units this month (import them hourly with `gpuledger units import`; docs/economics.md#work-units)");
}

// --- loading -------------------------------------------------------------------------------------
function fail(e) {
  // An error replaces what was shown: no stale numbers under a message about another request.
  $("content").hidden = true;
  shown = null;
  if (e.status === 401) $("token-form").hidden = false;
  $("error").textContent = e.message;
  document.body.dataset.ready = "error";
}

async function show() {
  $("error").textContent = "";
  document.body.dataset.ready = "";
  try {
    const c = current();
    crumbs();
    if (c.view === "intervals") {
      const body = await (await api(c.url)).json();
      shown = null;
      $("download-view").hidden = true;
      heading(body);
      $("notice").textContent = `${body.total_rows} ledger rows behind this hour of the GPU's line.`;
      $("cards").replaceChildren();
      $("chart-trend").replaceChildren();
      intervalsTable(body);
    } else {
      const dim = viewDim(c.view);
      const extra = c.view === "hours" ? { granularity: "hour" } : {};
      const body = await (await api("/v1/showback?" + params({ group_by: dim, limit: "1000", idle_policy: policy(), ...extra }))).json();
      if (!body.period) throw new Error("error: no data yet\nhint: start `gpuledger ingest` or the demo");
      if (!state.period.start) state.period = { start: body.period.start, end: body.period.end };
      const gran = granularity(state.period, body.data);
      const [series, wasters, idle] = await Promise.all([
        api("/v1/showback?" + params({ group_by: "cluster", granularity: gran, limit: "1000", idle_policy: policy() })).then((r) => r.json()),
        api("/v1/efficiency/top-wasters?" + params({ group_by: dim.startsWith("label:") ? "tenant" : dim, limit: "5" }))
          .then((r) => r.json()),
        api("/v1/efficiency/idle-gpus?" + params({ min_hours: "1", limit: "1000" })).then((r) => r.json()),
      ]);
      shown = body;
      $("download-view").hidden = false;
      heading(body); notice(body); cards(body); trend(series, gran); table(body); panels(wasters, idle);
      await business();
    }
    const month = state.period.start.slice(0, 7);
    const link = $("download");
    link.hidden = !(role === "admin" || role === "finance");
    link.dataset.month = month;
    link.textContent = `Download chargeback CSV (${month})`;
    $("content").hidden = false;
    document.body.dataset.ready = "1";
  } catch (e) { fail(e); }
}

function drill(row, dim, view) {
  document.body.dataset.ready = "";
  const url = new URL(row.drilldown, location.origin);
  const filters = {};
  for (const k of FILTER_KEYS) if (url.searchParams.has(k)) filters[k] = url.searchParams.get(k);
  const next = NEXT[view];
  const text = `${NAMES[dim === "time" ? "hours" : dim] || dim} ${label(row[dim], dim)}`;
  state.crumbs.push(next === "intervals"
    ? { label: text, view: "intervals", filters, url: row.drilldown + "&view=intervals&limit=1000" }
    : { label: text, view: next, filters });
  show();
}

async function start() {
  $("error").textContent = "";
  document.body.dataset.ready = "";
  try {
    const who = await (await api("/v1/whoami")).json();
    role = who.role;
    $("who").textContent = who.auth ? `token ${who.token_id}: ${who.role}${who.tenant ? " of " + who.tenant : ""}`
                                    : "authentication is off (development server)";
    $("token-form").hidden = true;
    state.period = period();
    const view = $("view").value;
    state.crumbs = [{ label: `all ${view === "label" ? viewDim(view) : NAMES[view]}s`, view, filters: {} }];
    await show();
  } catch (e) { fail(e); }
}

async function save(path, name) {
  try {
    const r = await api(path);
    const url = URL.createObjectURL(await r.blob());
    const a = document.createElement("a");
    a.href = url; a.download = name;
    document.body.appendChild(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) { fail(e); }
}

$("download").addEventListener("click", (ev) => {
  ev.preventDefault();
  const month = ev.currentTarget.dataset.month;
  save(`/v1/chargeback.csv?month=${encodeURIComponent(month)}`, `gpuledger-chargeback-${month}.csv`);
});
$("download-view").addEventListener("click", (ev) => {
  ev.preventDefault();
  if (!shown) return;
  const dim = shown.group_by.join(",");
  const extra = shown.granularity ? { granularity: shown.granularity } : {};
  save("/v1/showback?" + params({ group_by: dim, format: "csv", idle_policy: policy(), ...extra }),
       `gpuledger-showback-${dim.replace(/[^a-z0-9]+/gi, "-")}-${state.period.start.slice(0, 10)}.csv`);
});
$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  sessionStorage.setItem("gpuledger-token", $("token-input").value.trim());
  start();
});
$("controls").addEventListener("submit", (ev) => { ev.preventDefault(); start(); });
$("preset").addEventListener("change", () => { $("custom").hidden = $("preset").value !== "custom"; });
$("view").addEventListener("change", () => { $("label-wrap").hidden = $("view").value !== "label"; });
start();
